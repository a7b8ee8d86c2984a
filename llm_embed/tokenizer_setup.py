"""The model's tokenizer: configured for the model when attached, loaded with a checkpoint.

``encode``, the training collator and sentence-transformers must tokenize a text exactly as the
model was trained on it, so the model keeps its own configured copy of the tokenizer: pad token,
padding side, maximum length and a post-processor that appends EOS exactly when ``append_eos`` says so
(so that ``AutoTokenizer.from_pretrained(model folder)`` gives those ids outside ``encode`` too). Saved
beside the weights, it is loaded together with them, and configured again when the config changes.
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


def _special_tokens_around_text(tokenizer) -> tuple[list[int], list[int]] | None:
    """The special token ids the tokenizer puts before and after a text (``tokenizer("a")`` compared
    with the plain ids), or None when the plain ids do not appear in one piece among them."""
    with_specials = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return with_specials[:start], with_specials[start + len(plain) :]
    return None


def _set_template(tokenizer, prefix_ids: list[int], suffix: str | None) -> None:
    """Make the fast tokenizer's post-processor put ``prefix_ids`` before each text and ``suffix``
    (a special token) after it, or nothing when ``suffix`` is None."""
    from tokenizers.processors import TemplateProcessing

    prefix = tokenizer.convert_ids_to_tokens(prefix_ids)
    specials = dict(zip(prefix, prefix_ids))
    after = []
    if suffix is not None:
        specials[suffix] = tokenizer.convert_tokens_to_ids(suffix)
        after = [suffix]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=" ".join([*prefix, "$A", *after]),
        pair=" ".join([*prefix, "$A", *after, "$B:1", *(f"{token}:1" for token in after)]),
        special_tokens=list(specials.items()),
    )


def configure_eos(tokenizer, append_eos: bool = True) -> bool:
    """Make a fast tokenizer append EOS itself (``tokenizer(text)`` then ends with EOS), keeping the
    special tokens it already puts in front (BOS); with ``append_eos=False``, the reverse: a
    tokenizer that appends EOS after the text (a backbone's, or one saved by a model with
    ``append_eos=True``) stops doing so, its prefix kept. Saved with the tokenizer, so that
    ``AutoTokenizer.from_pretrained(model folder)`` gives ids the model was trained on even outside
    ``encode``, whichever way ``append_eos`` was set. Returns False (nothing changed) when the
    tokenizer already does what is asked; raises for a tokenizer whose post-processing cannot be
    rewritten this way."""
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    if eos_id is None:
        if not append_eos:
            return False  # no EOS token: nothing can append one
        raise ValueError("append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token")
    with_specials = tokenizer("a")["input_ids"]
    if bool(with_specials and with_specials[-1] == eos_id) == append_eos:
        return False
    around = _special_tokens_around_text(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not append_eos:
        if backend is None or around is None or around[1] != [eos_id]:
            raise ValueError(
                f"cannot use {type(tokenizer).__name__} with append_eos=False: its post-processing appends EOS "
                "after the text and cannot be rewritten not to (it is not a fast tokenizer, or it puts more special "
                "tokens after the text), so the tokenizer saved with the model would give ids the model does not "
                "embed. Load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)), or build the "
                "model with append_eos=True."
            )
        _set_template(tokenizer, around[0], None)
        return True
    if backend is None or around is None or around[1]:
        raise ValueError(
            f"cannot use {type(tokenizer).__name__} with append_eos=True: the model's tokenizer must append EOS "
            "itself, so that the tokenizer saved with the model gives the ids the model embeds, and this one's "
            "post-processing cannot be made to (it is not a fast tokenizer, or it puts special tokens after the "
            "text). Load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)), or build the model "
            "with append_eos=False (then no EOS is appended by encode() or the training collator)."
        )
    _set_template(tokenizer, around[0], eos)
    return True


def tokenizer_settings(config) -> tuple:
    """The config values a configured tokenizer follows (:func:`configure_tokenizer`). The model
    records them when it configures its tokenizer and configures it again when they change
    (``model.config.max_seq_length = 256``, ``st.max_seq_length = 256``), so that the tokenizer it
    uses and saves never describes an older config."""
    return (config.padding_side, config.max_seq_length, bool(config.append_eos))


def configure_tokenizer(tokenizer, config):
    """A configured copy of ``tokenizer`` for a model with ``config`` (the caller's object is unchanged):
    pad token, padding side, maximum length, and a post-processor that appends EOS exactly when
    ``config.append_eos`` says so (:func:`configure_eos`, both ways). Configuring an already
    configured tokenizer for another config gives what configuring the original would."""
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
    configure_eos(tokenizer, bool(config.append_eos))
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


__all__ = [
    "LOADING_ONLY_KEYS", "configure_eos", "configure_tokenizer", "load_saved_tokenizer", "tokenizer_settings",
]
