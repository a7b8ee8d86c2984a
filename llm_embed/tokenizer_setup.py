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

from .encoding import configure_eos

# Arguments of the load that put them into a tokenizer's init_kwargs, which save_pretrained writes to
# tokenizer_config.json: they describe the machine that loaded it, not the tokenizer.
LOADING_ONLY_KEYS = (
    "is_local", "local_files_only", "cache_dir", "token", "use_auth_token", "revision", "force_download",
    "proxies", "subfolder", "trust_remote_code", "_commit_hash", "code_revision",
)


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


def has_tokenizer_files(name_or_path, hub_kwargs: dict) -> bool:
    """Whether a local folder or Hub repo holds a saved tokenizer (``tokenizer_config.json``)."""
    from transformers.utils import cached_file

    kwargs = {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
    found = cached_file(
        name_or_path,
        "tokenizer_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **kwargs,
    )
    return found is not None


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


__all__ = ["LOADING_ONLY_KEYS", "configure_tokenizer", "has_tokenizer_files", "load_saved_tokenizer"]
