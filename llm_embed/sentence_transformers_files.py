"""The files that make a saved model folder load as ``SentenceTransformer(folder, trust_remote_code=True)``.

``modules.json`` (one module, saved in the root), ``config_sentence_transformers.json`` (prompts, the
default prompt, cosine similarity) and the module file itself, ``sentence_transformers_llm_embed.py``.
That module imports sentence-transformers, which only that loader needs, so the model's code never
imports it, and a model loaded as remote code (``trust_remote_code=True``, llm_embed not installed)
gets only the files the model's code imports: the module's text is therefore kept here, in
``MODULE_SOURCE``, and written from it, so that such a model saves a folder that loads in
sentence-transformers just as one saved with llm_embed installed. ``tests/test_sentence_transformers.py``
keeps ``MODULE_SOURCE`` equal to ``sentence_transformers_llm_embed.py``.
"""

from __future__ import annotations

import json
import os

SENTENCE_TRANSFORMERS_MODULE = "sentence_transformers_llm_embed"
MODULES = [{"idx": 0, "name": "0", "path": "", "type": f"{SENTENCE_TRANSFORMERS_MODULE}.LLMEmbeddingSTModule"}]


def sentence_transformers_settings(config) -> dict:
    """``config_sentence_transformers.json`` for a model of ``config``: its prompts and default prompt,
    cosine similarity (the embeddings are compared by cosine)."""
    return {"model_type": "SentenceTransformer", "prompts": dict(config.prompts),
            "default_prompt_name": config.default_prompt_name, "similarity_fn_name": "cosine"}


def saved_sentence_transformers_settings(folder) -> dict:
    """What a local folder's ``config_sentence_transformers.json`` sets beyond the model's config:
    ``truncate_dim`` and ``similarity_fn_name`` (what ``SentenceTransformer(..., truncate_dim=...)`` with
    ``st.similarity_fn_name = "dot"`` saves), each where it holds a value of its type; empty for a
    folder without that file (a Hub id included)."""
    path = os.path.join(folder, "config_sentence_transformers.json") if folder else ""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    kept = {}
    truncate_dim = settings.get("truncate_dim")
    if isinstance(truncate_dim, int) and not isinstance(truncate_dim, bool):
        kept["truncate_dim"] = truncate_dim
    if isinstance(settings.get("similarity_fn_name"), str):
        kept["similarity_fn_name"] = settings["similarity_fn_name"]
    return kept


def write_sentence_transformers_files(model, folder) -> None:
    """Write the sentence-transformers files for ``model`` into ``folder`` (the settings from
    ``model.config``: its prompts and default prompt; cosine similarity, as the embeddings are
    compared).

    ``truncate_dim`` and ``similarity_fn_name`` are not the model's config: ``st.save`` writes them, and
    ``LLMEmbeddingModel.from_pretrained`` keeps what the folder it loads has
    (``model.saved_sentence_transformers_settings``, from :func:`saved_sentence_transformers_settings`),
    so that ``AutoModel.from_pretrained(p).save_pretrained(q)`` does not drop them."""
    with open(os.path.join(folder, SENTENCE_TRANSFORMERS_MODULE + ".py"), "w", encoding="utf-8") as handle:
        handle.write(MODULE_SOURCE)
    settings = sentence_transformers_settings(model.config)
    settings.update(model.saved_sentence_transformers_settings)
    for name, content in (("modules.json", MODULES), ("config_sentence_transformers.json", settings)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)


# The text of sentence_transformers_llm_embed.py, written by every save (see the module docstring).
MODULE_SOURCE = r'''"""A sentence-transformers input module that runs a whole :class:`LLMEmbeddingModel`, so that a
saved model loads as ``SentenceTransformer(path, trust_remote_code=True)`` and embeds exactly as
``model.encode`` does (same tokenization, EOS, truncation, pooling head, normalisation).

``save_pretrained`` writes this file next to the weights with ``modules.json`` (one module, saved in
the root) and ``config_sentence_transformers.json`` (prompts, default prompt, cosine similarity).
sentence-transformers imports it from the model folder (relative imports only), so llm_embed need
not be installed; sentence-transformers must be. The model's code never imports this file (it would
import sentence-transformers); ``sentence_transformers_files.MODULE_SOURCE`` holds a copy of its
text, which a save writes, so that a model loaded as remote code saves it too (a test keeps the two
equal).
"""

from __future__ import annotations

import json
import os

import torch
from sentence_transformers.base.modules.input_module import InputModule

from .encoding import (
    SENTENCE_TRANSFORMERS_ONLY,
    check_prompt_fits,
    check_texts,
    pad_batch,
    resolve_pad_id,
    tokenize_texts,
)
from .modeling_llm_embed import LLMEmbeddingModel
from .sentence_transformers_files import sentence_transformers_settings

SETTINGS_FILE = "config_sentence_transformers.json"


class Features(dict):
    """The features ``forward`` returns: a dict whose missing ``"token_embeddings"`` is a clear error.
    ``SentenceTransformer.encode(output_value="token_embeddings")`` reads that key, which this module,
    like ``LLMEmbeddingModel.encode``, does not produce; a bare ``KeyError`` would not say why."""

    def __missing__(self, key):
        if key == "token_embeddings":
            raise ValueError(
                "output_value='token_embeddings' is not supported: this model returns sentence embeddings only "
                "(its pooling head runs inside the module); for token states, run the backbone: "
                "st[0].model.backbone(input_ids=..., attention_mask=...)."
            )
        raise KeyError(key)


class LLMEmbeddingSTModule(InputModule):
    """One module: text -> ids (prompt, EOS, truncation as in ``encode``) -> LLMEmbeddingModel -> embedding."""

    save_in_root = True

    def __init__(self, model: LLMEmbeddingModel):
        super().__init__()
        self.model = model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self.model.tokenizer = tokenizer  # the model configures a copy (pad, side, length, EOS)

    @property
    def max_seq_length(self) -> int:
        return self.model.config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.config.max_seq_length = value  # the model's tokenizer follows (LLMEmbeddingModel.tokenizer)

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.config.embedding_dim

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Token ids as ``encode`` makes them: the same helpers, the prompt passed as the prefix.
        sentence-transformers passes its other ``encode`` arguments on: ``task`` (``"query"`` from
        ``encode_query``, whose prompt sentence-transformers has already resolved into ``prompt``), and
        ``processing_kwargs`` and the like, each refused unless None, as ``LLMEmbeddingModel.encode``
        refuses it, never ignored."""
        for name, value in kwargs.items():
            if value is not None and name != "task":
                reason = SENTENCE_TRANSFORMERS_ONLY.get(name, "this module takes no other arguments")
                raise ValueError(f"encode({name}={value!r}) is not supported for this llm_embed model: {reason}.")
        texts, _ = check_texts(list(inputs))  # pairs (tuples) and dicts refused by name, as encode refuses them
        config, tokenizer = self.model.config, self.model.tokenizer
        check_prompt_fits(tokenizer, prompt or "", config.max_seq_length, config.append_eos)  # as encode refuses
        # a truncation warning names the user's line that called st.encode (stacklevel None), once per batch
        ids = tokenize_texts(tokenizer, texts, config.max_seq_length, config.append_eos, prefix=prompt or "",
                             stacklevel=None)
        input_ids, attention_mask = pad_batch(ids, resolve_pad_id(tokenizer), config.padding_side)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def tokenize(self, texts, **kwargs):  # sentence-transformers < 6 name
        return self.preprocess(texts, **kwargs)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        output = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        features = Features(features)
        features["sentence_embedding"] = output.embeddings
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """The model's ``save_pretrained``, keeping the ``config_sentence_transformers.json`` that
        ``SentenceTransformer.save`` wrote just before calling this (its prompts, default prompt,
        ``truncate_dim``, similarity function): ``save_pretrained`` writes its own, from the model's
        config, and would otherwise replace the settings the user changed on the SentenceTransformer.

        The SentenceTransformer's prompts and default prompt become the model config's first
        (``st.prompts`` is the user's copy of them), so that ``config.json`` holds the same prompts, and
        ``AutoModel.from_pretrained(folder).encode(prompt_name=...)`` embeds as ``st.encode`` did.

        ``SentenceTransformer.save`` has already overwritten that file when this runs; if the save
        then fails (prompts the config refuses, a full disk), the file is put back in line with the
        checkpoint still in the folder (:meth:`_restore_settings`), which would otherwise no longer load."""
        if safe_serialization is not True:
            raise ValueError("llm_embed saves weights as safetensors only; safe_serialization=False "
                             "(pytorch_model.bin) is not supported: leave it out")
        path = os.path.join(output_path, SETTINGS_FILE)
        settings = None
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                settings = handle.read()
        try:
            if settings is not None:
                self._adopt_prompts(json.loads(settings))
            self.model.save_pretrained(output_path)
        except BaseException:
            if settings is not None:
                self._restore_settings(output_path)
            raise
        if settings is not None:
            with open(path, "wb") as handle:
                handle.write(settings)

    def _restore_settings(self, output_path: str) -> None:
        """After a failed save: the settings file rebuilt from the checkpoint still in the folder, as
        ``save_pretrained`` writes it (:func:`sentence_transformers_settings` of its ``config.json``).
        The old file is gone by now, so a setting only it held (an earlier ``st.save``'s
        ``truncate_dim``) is not restored; the failed save's own settings are not kept either. A folder
        without a checkpoint loses the file, which belongs to no model."""
        path = os.path.join(output_path, SETTINGS_FILE)
        if not os.path.isfile(os.path.join(output_path, "config.json")):
            os.remove(path)
            return
        saved = type(self.model.config).from_pretrained(output_path)  # prompts left out of config.json: defaults
        staging = path + ".tmp"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(sentence_transformers_settings(saved), handle, indent=2)
        os.replace(staging, path)

    def _adopt_prompts(self, settings: dict) -> None:
        """Set ``settings``' prompts and default prompt on the model's config, checked as any config
        value is; a refused pair leaves the config as it was."""
        config = self.model.config
        prompts = settings.get("prompts", config.prompts)
        default = settings.get("default_prompt_name", config.default_prompt_name)
        if prompts == config.prompts and default == config.default_prompt_name:
            return
        before = (config.prompts, config.default_prompt_name)
        try:
            config.prompts, config.default_prompt_name = dict(prompts), default
            config.validate_design()
        except (TypeError, ValueError):
            config.prompts, config.default_prompt_name = before
            raise

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, model_kwargs: dict | None = None, config_kwargs: dict | None = None,
             processor_kwargs: dict | None = None, backend: str = "torch", **kwargs) -> LLMEmbeddingSTModule:
        """The model, loaded with ``LLMEmbeddingModel.from_pretrained``. ``model_kwargs`` and
        ``config_kwargs`` both reach it (config overrides such as ``max_seq_length``, load options such
        as ``dtype``); ``processor_kwargs`` and backends other than torch are refused, not ignored: the
        tokenizer is the model's configured one, and the model runs in PyTorch only. So are ``prompts``
        and ``default_prompt_name`` there: sentence-transformers prompts from its own settings
        (``config_sentence_transformers.json``, or ``SentenceTransformer(..., prompts=...)``), so the
        config's would not change what ``st.encode`` does, and ``st.save`` would write the others back."""
        if backend != "torch":
            raise ValueError(
                f"SentenceTransformer(..., backend={backend!r}) is not supported for this model: it runs in PyTorch "
                "only (its pooling head and EOS handling are not exported to ONNX / OpenVINO); use backend='torch'."
            )
        if processor_kwargs:
            raise ValueError(
                f"SentenceTransformer(..., processor_kwargs={processor_kwargs!r}) is not supported for this model: "
                "it tokenizes with its own configured tokenizer; set its settings as config overrides instead, e.g. "
                "config_kwargs={'max_seq_length': 256, 'padding_side': 'left', 'append_eos': True}."
            )
        load_kwargs = dict(model_kwargs or {})
        for key, value in (config_kwargs or {}).items():
            if key in load_kwargs and load_kwargs[key] != value:
                raise ValueError(
                    f"SentenceTransformer(...): {key!r} is {load_kwargs[key]!r} in model_kwargs and {value!r} in "
                    "config_kwargs; pass it once."
                )
            load_kwargs[key] = value
        prompt_settings = {key: load_kwargs[key] for key in ("prompts", "default_prompt_name") if key in load_kwargs}
        if prompt_settings:
            arguments = ", ".join(f"{key}={value!r}" for key, value in prompt_settings.items())
            raise ValueError(
                f"SentenceTransformer(...) got {', '.join(prompt_settings)} in config_kwargs / model_kwargs: "
                "sentence-transformers takes its prompts from config_sentence_transformers.json, not from the model's "
                f"config, so they would not reach st.encode; pass them as SentenceTransformer(..., {arguments})."
            )
        if subfolder:
            load_kwargs["subfolder"] = subfolder
        model = LLMEmbeddingModel.from_pretrained(
            model_name_or_path, token=token, cache_dir=cache_folder, revision=revision,
            local_files_only=local_files_only, **load_kwargs,
        )
        return cls(model)


__all__ = ["Features", "LLMEmbeddingSTModule"]
'''


__all__ = ["MODULE_SOURCE", "SENTENCE_TRANSFORMERS_MODULE", "saved_sentence_transformers_settings",
           "sentence_transformers_settings", "write_sentence_transformers_files"]
