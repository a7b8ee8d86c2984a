"""An mteb 2.x encoder (``pip install llm-embed[mteb]``): ``mteb.evaluate(MTEBEncoder(model), tasks)``.

mteb hands ``encode`` a DataLoader of ``{"text": [...]}`` batches and a ``prompt_type`` (query /
document, or None for symmetric tasks such as STS and clustering). The model's own prompts are
used, resolved as ``encode`` resolves them (:func:`~llm_embed.encoding.resolve_prompt`): queries get
the model's ``query`` prompt and documents its ``document`` prompt, as ``encode_query`` /
``encode_document`` do (no prefix where the model has no such prompt); symmetric tasks get
``symmetric_prompt_name`` (default: the model's ``default_prompt_name``, i.e. no prompt unless
configured). ``task_prompts`` overrides them with literal prefixes, keyed as mteb's own wrappers key
``model_prompts``, first match wins: ``"<task name>-<query|document>"``, ``"<task name>"``,
``"<task type>-<query|document>"``, ``"<task type>"``, ``"query"`` / ``"document"``. A key that is
none of these (a misspelt task name) is refused when the encoder is built, not ignored.

mteb's ``encode_kwargs`` (``mteb.evaluate(..., encode_kwargs=...)``) reach ``encode``: ``batch_size``,
``show_progress_bar`` and ``precision`` (the vectors quantized as sentence-transformers' ``encode``
quantizes them, as mteb's own SentenceTransformer wrapper does); any other key is refused, not ignored.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from typing import Any

import numpy as np
import torch

from .encoding import PROMPT_SIDES, resolve_prompt, side_prompt_name

# The keys of mteb's ``EncodeKwargs`` (mteb.types), which mteb passes on to ``encode``; mteb.evaluate
# sets ``batch_size`` (32) itself when the caller's encode_kwargs have none.
ENCODE_KWARGS = ("batch_size", "show_progress_bar", "precision")
DEFAULT_BATCH_SIZE = 32


def require_mteb():
    try:
        return importlib.import_module("mteb")
    except ImportError as err:
        raise ImportError("the mteb encoder needs mteb: pip install 'llm-embed[mteb]' (or pip install mteb)") from err


def check_task_prompts(task_prompts: dict[str, str] | None) -> dict[str, str]:
    """``task_prompts`` as a new dict, once every key is one mteb knows (a task name or type, a prompt
    type, or ``"<task name or type>-<prompt type>"``: mteb's ``validate_task_to_prompt_name``) and every
    value is a string: a misspelt key would otherwise never match and be silently ignored."""
    prompts = dict(task_prompts or {})
    not_text = {key: value for key, value in prompts.items() if not isinstance(value, str)}
    if not_text:
        raise TypeError(f"task_prompts values must be strings (the literal prefix); got {not_text!r:.200}")
    if not prompts:
        return prompts
    from mteb.models.abs_encoder import AbsEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mteb warns per key; the error below names them all
        valid, _ = AbsEncoder.validate_task_to_prompt_name(prompts, raise_for_invalid_keys=False)
    unknown = sorted(set(prompts) - set(valid))
    if unknown:
        raise ValueError(f"task_prompts keys {unknown} are not known to mteb: a key is an mteb task name (e.g. "
                         "'STSBenchmark'), a task type (e.g. 'STS', 'Retrieval'), 'query' or 'document', or "
                         "'<task name or type>-<query|document>'; fix the spelling")
    return prompts


def quantize(embeddings: np.ndarray, precision: str | None) -> np.ndarray:
    """``embeddings`` at mteb's ``precision`` (``"int8"``, ``"uint8"``, ``"binary"``, ``"ubinary"``), quantized
    by sentence-transformers' ``quantize_embeddings``, as mteb's SentenceTransformer wrapper has
    ``SentenceTransformer.encode`` do it (int8 ranges from the call's own vectors); None or ``"float32"``
    leaves them as they are."""
    if precision is None or precision == "float32" or not len(embeddings):
        return embeddings
    try:
        from sentence_transformers import quantize_embeddings
    except ImportError as err:
        raise ImportError(f"encode_kwargs precision={precision!r} quantizes with sentence-transformers: pip install "
                          "'llm-embed[sentence-transformers]' (or pip install sentence-transformers)") from err
    return quantize_embeddings(embeddings, precision=precision)


class MTEBEncoder:
    """Wraps an :class:`~llm_embed.LLMEmbeddingModel` (or a path / Hub id to load) for mteb.

    ``batch_size``: given here, it wins over mteb's ``encode_kwargs["batch_size"]``, which
    ``mteb.evaluate`` always sets (32 when the caller gives none), so that the value asked for here is
    not silently replaced; left None, mteb's value is used (32 where mteb gives none)."""

    def __init__(
        self,
        model,
        revision: str | None = None,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        task_prompts: dict[str, str] | None = None,
        symmetric_prompt_name: str | None = None,
        **load_kwargs: Any,
    ):
        require_mteb()
        if isinstance(model, (str, os.PathLike)):
            from .modeling_llm_embed import LLMEmbeddingModel

            # Not AutoModel: a plain decoder's folder would load as that decoder and fail at the first
            # encode; LLMEmbeddingModel refuses it by name.
            model = LLMEmbeddingModel.from_pretrained(model, revision=revision, **load_kwargs)
        if device is not None:
            model = model.to(device)
        self.model = model
        self.revision = revision
        self.batch_size = batch_size
        self.task_prompts = check_task_prompts(task_prompts)
        prompts = model.config.prompts
        if symmetric_prompt_name is not None and symmetric_prompt_name not in prompts and \
                symmetric_prompt_name not in PROMPT_SIDES:  # now, not at the first symmetric task of a long run
            raise ValueError(f"MTEBEncoder(symmetric_prompt_name={symmetric_prompt_name!r}): not a prompt of the "
                             f"model, whose prompts are {sorted(prompts)}; name one of them, or leave it None for "
                             "the model's default prompt")
        self.symmetric_prompt_name = symmetric_prompt_name

    def prompt_for(self, task_metadata, prompt_type) -> str:
        """The literal prefix for this task and side."""
        kind = getattr(prompt_type, "value", prompt_type)
        name, task_type = task_metadata.name, task_metadata.type
        # mteb's get_prompt_name order; the sided keys and the bare side only for a sided prompt_type
        keys = (f"{name}-{kind}", name, f"{task_type}-{kind}", task_type, kind) if kind else (name, task_type)
        for key in keys:
            if key in self.task_prompts:
                return self.task_prompts[key]
        config = self.model.config
        if kind in PROMPT_SIDES:
            return resolve_prompt(config.prompts, side_prompt_name(config.prompts, kind), None, None)
        return resolve_prompt(config.prompts, config.default_prompt_name, self.symmetric_prompt_name, None)

    def encode(
        self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs
    ) -> np.ndarray:
        """The model's embeddings of mteb's batches. ``kwargs`` are mteb's ``encode_kwargs``
        (:data:`ENCODE_KWARGS`); a key outside them is refused: it would change nothing here, while
        mteb files the scores as if it had."""
        unknown = sorted(set(kwargs) - set(ENCODE_KWARGS))
        if unknown:
            raise TypeError(f"MTEBEncoder.encode got encode_kwargs {unknown} it does not support: it takes "
                            f"{', '.join(ENCODE_KWARGS)}; leave the others out of "
                            "mteb.evaluate(..., encode_kwargs=...)")
        texts = [text for batch in inputs for text in batch["text"]]
        batch_size = self.batch_size if self.batch_size is not None else kwargs.get("batch_size", DEFAULT_BATCH_SIZE)
        embeddings = self.model.encode(
            texts,
            prompt=self.prompt_for(task_metadata, prompt_type),
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=kwargs.get("show_progress_bar", False),
        )
        return quantize(embeddings, kwargs.get("precision"))

    @staticmethod
    def _as_tensor(x) -> torch.Tensor:
        tensor = torch.as_tensor(x, dtype=torch.float32)
        return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        a = torch.nn.functional.normalize(self._as_tensor(embeddings1), dim=-1)
        b = torch.nn.functional.normalize(self._as_tensor(embeddings2), dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        a = torch.nn.functional.normalize(self._as_tensor(embeddings1), dim=-1)
        b = torch.nn.functional.normalize(self._as_tensor(embeddings2), dim=-1)
        return (a * b).sum(dim=-1)

    def weights_revision(self) -> str:
        """The revision mteb records when none was given: 16 hex digits of a hash of what decides the
        vectors (options, backbone config, tokenizer, sampled weights: ``corpus.model_fingerprint``).
        mteb caches results by model name and revision, and the name is only the folder's last part
        (``runA/final`` and ``runB/final`` are both ``llm_embed/final``; an unsaved model is
        ``llm_embed/unnamed``), so a fixed revision would hand one model's cached scores to another.
        Computed at each call: a model trained between two evaluations gets a new revision."""
        from .corpus import model_fingerprint

        encoded = json.dumps(model_fingerprint(self.model), sort_keys=True, default=str).encode("utf-8")
        return "weights-" + hashlib.sha256(encoded).hexdigest()[:16]

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta

        config = self.model.config
        name = config.name_or_path or "llm_embed/unnamed"
        if name.count("/") != 1 or name.startswith(("/", ".")):
            name = f"llm_embed/{name.rstrip('/').rsplit('/', 1)[-1] or 'unnamed'}"
        parameters = sum(p.numel() for p in self.model.parameters())
        return ModelMeta(
            loader=None,
            name=name,
            revision=self.revision or self.weights_revision(),
            release_date=None,
            languages=None,
            n_parameters=parameters,
            memory_usage_mb=round(sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20, 1),
            max_tokens=config.max_seq_length,
            embed_dim=config.embedding_dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            similarity_fn_name="cosine",
            framework=["PyTorch"],
            reference=None,
            use_instructions=any(config.prompts.values()),
            training_datasets=None,
        )


__all__ = ["MTEBEncoder", "require_mteb"]
