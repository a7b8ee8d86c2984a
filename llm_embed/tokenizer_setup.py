"""The model's tokenizer: configured for the model when attached, loaded with a checkpoint.

``encode``, the training collator and sentence-transformers must tokenize a text exactly as the
model was trained on it, so the model keeps its own configured copy of the tokenizer: pad token,
padding side, maximum length and, with ``append_eos``, a post-processor that appends EOS (so that
``AutoTokenizer.from_pretrained(model folder)`` gives those ids outside ``encode`` too). Saved
beside the weights, it is loaded together with them.
"""

from __future__ import annotations

import copy

from transformers import AutoTokenizer

# Arguments of the load that put them into a tokenizer's init_kwargs, which save_pretrained writes to
# tokenizer_config.json: they describe the machine that loaded it, not the tokenizer.
LOADING_ONLY_KEYS = (
    "is_local", "local_files_only", "cache_dir", "token", "use_auth_token", "revision", "force_download",
    "proxies", "subfolder", "trust_remote_code", "_commit_hash", "code_revision",
)


def configure_eos(tokenizer) -> bool:
    """Make a fast tokenizer append EOS itself (``tokenizer(text)`` then ends with EOS), keeping the
    special tokens it already puts in front (BOS). Saved with the tokenizer, so that
    ``AutoTokenizer.from_pretrained(model folder)`` gives ids the model was trained on even outside
    ``encode``. Returns False (nothing changed) when it already does so; raises for a tokenizer
    whose post-processing cannot be rewritten this way."""
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    if eos_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token")
    with_specials = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_specials and with_specials[-1] == eos_id:
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cut = len(with_specials) - len(plain)
    if backend is None or cut < 0 or with_specials[cut:] != plain:
        raise ValueError(
            f"cannot use {type(tokenizer).__name__} with append_eos=True: the model's tokenizer must append EOS "
            "itself, so that the tokenizer saved with the model gives the ids the model embeds, and this one's "
            "post-processing cannot be made to (it is not a fast tokenizer, or it puts special tokens after the "
            "text). Load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)), or build the model "
            "with append_eos=False (then no EOS is appended by encode() or the training collator)."
        )
    from tokenizers.processors import TemplateProcessing

    prefix = tokenizer.convert_ids_to_tokens(with_specials[:cut])
    specials = dict(zip(prefix, with_specials[:cut]), **{eos: eos_id})
    backend.post_processor = TemplateProcessing(
        single=" ".join([*prefix, "$A", eos]),
        pair=" ".join([*prefix, "$A", eos, "$B:1", f"{eos}:1"]),
        special_tokens=list(specials.items()),
    )
    return True


def configure_tokenizer(tokenizer, config):
    """A configured copy of ``tokenizer`` for a model with ``config`` (the caller's object is unchanged)."""
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    # Set both the attribute and init_kwargs: save_pretrained writes the latter, so that
    # AutoTokenizer.from_pretrained(saved folder) comes back with the model's settings.
    for name, value in (("padding_side", config.padding_side), ("model_max_length", config.max_seq_length)):
        setattr(tokenizer, name, value)
        tokenizer.init_kwargs[name] = value
    for key in LOADING_ONLY_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    if config.append_eos:
        configure_eos(tokenizer)
    return tokenizer


def load_saved_tokenizer(name_or_path, hub_kwargs: dict, backbone_config=None):
    """The tokenizer saved beside a checkpoint, loaded now (not on first use: the folder may be
    overwritten or deleted by then). A broken tokenizer file fails here, naming the checkpoint.

    ``backbone_config`` is handed to ``AutoTokenizer`` as the model's config, so that it does not load
    the folder's ``config.json`` itself: that is an llm_embed config, which, without the package,
    would make transformers ask whether to run its code (the tokenizer needs none)."""
    kwargs = dict(hub_kwargs)
    if backbone_config is not None:
        kwargs["config"] = backbone_config
    try:
        return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (ValueError, OSError, TypeError, KeyError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"the tokenizer saved with the checkpoint {name_or_path} cannot be loaded ({type(error).__name__}: "
            f"{error}). Its tokenizer files (tokenizer.json, tokenizer_config.json) are damaged: save the "
            "backbone's tokenizer there again, e.g. AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)."
        ) from error


__all__ = ["LOADING_ONLY_KEYS", "configure_eos", "configure_tokenizer", "load_saved_tokenizer"]
