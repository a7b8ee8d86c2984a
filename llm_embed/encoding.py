"""``encode``: texts in, embeddings out, the sentence-transformers way.

A call is cut into pieces (a small first one, so the device starts early, then up to 4,096 texts);
each piece is tokenized while the previous one runs, sorted by token length so that each batch
carries little padding (or, when packing, packed into rows of one length and batched by a token
budget), run through the model batch by batch, and put back in the caller's order. The prompt prefix,
EOS and truncation to ``max_seq_length`` are applied here, so that every caller (search, training
evaluation, mteb) embeds a text the same way.

The signature follows sentence-transformers' ``SentenceTransformer.encode`` (``normalize_embeddings``,
``convert_to_numpy`` / ``convert_to_tensor``, ``encode_query`` / ``encode_document``), so that code
written for a ``SentenceTransformer`` runs on an ``LLMEmbeddingModel`` unchanged and gets the same
shapes, types and prompts; its arguments that have no meaning here are refused, never ignored.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from .packing import call_packing_mode, host_to_device, pack_batch, plan_packed_batches, resolve_packing

logger = logging.getLogger(__name__)


def check_texts(sentences) -> tuple[list[str], bool]:
    """Validate ``encode``'s input; returns (texts, whether a single string was given). A 1-D numpy
    array of strings is a list of texts, as in sentence-transformers (``df["text"].values``)."""
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, np.ndarray):
        if sentences.ndim != 1 or sentences.dtype.kind not in ("U", "O"):
            raise TypeError(
                f"encode() takes a 1-D numpy array of strings, got one of shape {sentences.shape} and dtype "
                f"{sentences.dtype}; pass a list of strings, e.g. array.ravel().tolist() for a 2-D array of text."
            )
        sentences = sentences.tolist()  # np.str_ items become str
    if isinstance(sentences, (bytes, bytearray, memoryview)):
        # a bytes object is a Sequence (of ints): without this check it would be taken for a list of texts
        raise TypeError(
            f"encode() got {type(sentences).__name__}, which is not text; decode it first, e.g. "
            "model.encode(data.decode('utf-8'))."
        )
    if sentences is None or not isinstance(sentences, Sequence):
        raise TypeError(
            f"encode() takes a string or a list of strings, got {type(sentences).__name__}; "
            "wrap a single text as model.encode('text') or model.encode(['text'])."
        )
    texts = list(sentences)
    if not texts:
        raise ValueError("encode() got an empty list of texts; pass at least one string.")
    for index, text in enumerate(texts):
        if isinstance(text, (bytes, bytearray)):
            raise TypeError(
                f"encode(): item {index} is {type(text).__name__}, not text: {text!r:.80}; decode it first, "
                "e.g. [b.decode('utf-8') for b in items]."
            )
        if not isinstance(text, str):
            raise TypeError(f"encode(): item {index} is {type(text).__name__}, not str: {text!r:.80}")
    return texts, False


NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "<not given>"})()
"""Default of ``encode``'s ``inputs`` / ``sentences``: tells "not passed" from an explicit None."""


def resolve_inputs(inputs, sentences):
    """``encode``'s texts from ``inputs`` (the first argument's name in sentence-transformers >= 6.2)
    or ``sentences`` (its older name there, and here): exactly one of the two, so that code written
    for either version runs."""
    if inputs is not NOT_GIVEN and sentences is not NOT_GIVEN:
        raise TypeError(
            "encode() got both inputs and sentences, which name the same argument (sentences is its older "
            "name); pass the texts once, e.g. model.encode(texts) or model.encode(inputs=texts)."
        )
    if inputs is NOT_GIVEN and sentences is NOT_GIVEN:
        raise TypeError("encode() missing the texts to embed: pass model.encode(texts) or model.encode(inputs=texts)")
    return sentences if inputs is NOT_GIVEN else inputs


def resolve_prompt(prompts: dict[str, str], default_prompt_name: str | None, prompt_name, prompt) -> str:
    """The prefix to put before every text."""
    if prompt is not None and prompt_name is not None:
        raise ValueError("encode(): pass either prompt_name or prompt, not both.")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"encode(): prompt must be a string, got {type(prompt).__name__}")
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if prompt_name is None and name not in prompts:
        # config.prompts is a plain dict that can be edited in place after the config validated it: the
        # default prompt gone would embed every text unprompted (and the model would not save)
        raise ValueError(
            f"encode(): config.default_prompt_name is {name!r} but config.prompts has no {name!r} (its prompts are "
            f"{sorted(prompts)}); add it back, or set config.default_prompt_name = None to embed without a prompt"
        )
    if name in PROMPT_SIDES and name not in prompts:
        # sentence-transformers gives every model a "query" and a "document" prompt, empty unless saved,
        # so that prompt_name="query" works on any model; a model without one embeds queries as they are
        return ""
    if name not in prompts:
        raise ValueError(f"encode(): unknown prompt_name {name!r}; this model's prompts are {sorted(prompts)}")
    value = prompts[name]
    if not isinstance(value, str):
        # config.prompts is a plain dict that can be edited in place after the config validated it
        raise TypeError(
            f"encode(): prompt {name!r} in config.prompts is {value!r:.80} ({type(value).__name__}); a prompt must "
            f"be a string: set config.prompts[{name!r}] = '' for no prefix."
        )
    return value


PROMPT_SIDES = ("query", "document")
"""The two sides of an asymmetric task, and the names of their prompts in ``config.prompts``."""


def side_prompt_name(prompts: dict[str, str], side: str) -> str | None:
    """The prompt name for one side of an asymmetric task (``encode_query`` / ``encode_document``,
    mteb's query / document prompt types) when the caller names none: the model's prompt called
    ``side``, or no prompt when it has none, never ``default_prompt_name`` (that one is for plain
    ``encode``). This is sentence-transformers' rule, so that a query embeds the same through
    either library."""
    if side not in PROMPT_SIDES:
        raise ValueError(f"side must be one of {PROMPT_SIDES}, got {side!r}")
    return side if side in prompts else None


def resolve_pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (decoders often have no pad
    token; the attention mask hides padding, so any id works). The one place this fallback is
    written, for ``encode``, the training collator and the sentence-transformers module alike."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(
        "the tokenizer has neither a pad_token nor an eos_token, so batches cannot be padded; set "
        "tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.unk_token) before using it."
    )


TRUNCATION_SLACK = 32
"""Tokens kept beyond ``max_seq_length`` when a long text is cut before tokenizing (see
:func:`tokenize_texts`). Cutting a text can change how its last few tokens are split (the cut may
fall inside a word, a run of spaces, a CJK run that BPE merges as one piece); those tokens lie past
the truncation point as long as the change reaches back fewer than this many tokens."""

_VOCAB_LOCK = threading.Lock()
_MAX_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (len(tokenizer), chars)
_PROMPT_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (len, {prompt: tokens})


def max_token_chars(tokenizer) -> int:
    """Length of the longest vocabulary entry: no token covers more characters of a text than that, so
    a text of more than ``n x max_token_chars`` characters has more than ``n`` tokens. Holds for
    byte-level BPE (one vocabulary character per byte, and a character is at least one byte) and for
    SentencePiece (``▁`` stands for one space); where a tokenizer breaks it (a normalizer that drops
    characters, one unknown token for a whole word), :func:`tokenize_texts` notices and tokenizes the
    text in full. Computed once per tokenizer; recomputed when tokens are added (``len`` changes)."""
    size = len(tokenizer)
    with _VOCAB_LOCK:
        cached = _MAX_TOKEN_CHARS.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    chars = max(map(len, tokenizer.get_vocab()), default=1) or 1
    with _VOCAB_LOCK:
        _MAX_TOKEN_CHARS[tokenizer] = (size, chars)
    return chars


def find_surrogate(inputs: list[str]) -> tuple[int, int] | None:
    """(input index, character position) of the first lone surrogate in ``inputs``, if any. A lone
    surrogate (U+D800..U+DFFF) is not a Unicode character: strict UTF-8 encoding refuses it, and the
    encoder's error says where. Only called once tokenizing failed, so that valid input pays no scan."""
    for index, text in enumerate(inputs):
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            if "surrogate" in err.reason:
                return index, err.start
    return None


def _run_tokenizer(tokenizer, inputs: list[str], sources: list[int], prefix: str) -> list[list[int]]:
    """``tokenizer(inputs)`` ids; ``inputs[j]`` is ``prefix + texts[sources[j]]`` (maybe cut), so that a
    lone surrogate, which tokenizers reject with an unrelated-looking error, is reported by its text
    and position in that text."""
    try:
        # verbose=False: transformers' "Token indices sequence length is longer than the specified maximum
        # sequence length ... will result in indexing errors" is wrong here, the ids are truncated below. The
        # flag gates only that warning and padding / truncation-strategy ones, which cannot apply to this call.
        return tokenizer(inputs, add_special_tokens=True, truncation=False, return_attention_mask=False,
                         verbose=False)["input_ids"]
    except Exception as err:
        found = find_surrogate(inputs)
        if found is None:
            raise
        j, position = found
        char = inputs[j][position]
        where = (
            f"the prompt {prefix!r:.80}, character {position}" if position < len(prefix)
            else f"text {sources[j]}, character {position - len(prefix)}"
        )
        raise ValueError(
            f"encode(): {where} is a lone surrogate {char!r}, which is not valid Unicode and cannot be tokenized. "
            "It usually comes from bytes decoded with errors='surrogateescape' or from UTF-16 / JSON escapes of a "
            "split surrogate pair. Fix the source decoding upstream (decode with the right codec; join surrogate "
            "pairs with s.encode('utf-16', 'surrogatepass').decode('utf-16')), or replace the character: "
            "text.encode('utf-8', 'replace').decode('utf-8')."
        ) from err


def tokenize_texts(
    tokenizer, texts: list[str], max_seq_length: int, append_eos: bool, prefix: str = "",
    stacklevel: int | None = 3,
) -> list[list[int]]:
    """Token ids of ``prefix + text`` per text, truncated to ``max_seq_length`` (EOS included), with one
    warning if any was cut (see :func:`tokenize_counting_truncation`; ``stacklevel`` as
    :func:`warn_truncated`'s: by default the caller's caller)."""
    ids, truncated = tokenize_counting_truncation(tokenizer, texts, max_seq_length, append_eos, prefix)
    warn_truncated(truncated, len(texts), max_seq_length, stacklevel=stacklevel)
    return ids


#: Packages whose frames a truncation warning passes over to reach the user's line: sentence-transformers'
#: encode calls the module's preprocess (sentence_transformers_llm_embed), through torch's no-grad wrapper.
PASS_THROUGH_PACKAGES = ("sentence_transformers", "torch")


def warn_truncated(truncated: int, total: int, max_seq_length: int, stacklevel: int | None = None) -> None:
    """The one warning of a call whose texts were cut to ``max_seq_length``. ``stacklevel`` counts from
    the caller of this function; None: the first frame outside this package's folder (and outside
    :data:`PASS_THROUGH_PACKAGES`), i.e. the user's line whichever of ``encode`` / ``encode_query`` /
    ``encode_document`` / ``SentenceTransformer.encode`` it called (a fixed count would name a line in
    a library, and Python's default filter, once per location, would then hide the warning of every
    later call site)."""
    if not truncated:
        return
    if stacklevel is None:
        here = os.path.dirname(os.path.abspath(__file__))
        frame, stacklevel = sys._getframe(1), 1
        while frame is not None and (
                os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here
                or str(frame.f_globals.get("__name__", "")).split(".")[0] in PASS_THROUGH_PACKAGES):
            frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(
        f"{truncated} of {total} texts were longer than max_seq_length={max_seq_length} tokens "
        "and were truncated.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def tokenize_counting_truncation(
    tokenizer, texts: list[str], max_seq_length: int, append_eos: bool, prefix: str = "", first_index: int = 0
) -> tuple[list[list[int]], int]:
    """Token ids of ``prefix + text`` per text, truncated to ``max_seq_length`` (EOS included), and how
    many texts were cut (the caller warns once per call, however many pieces it tokenizes in).

    The tokenizer runs without truncation (so that EOS goes after the truncated text, and truncation is
    counted), but a text far longer than any text that fits is first cut to
    ``(max_seq_length + TRUNCATION_SLACK) x max_token_chars`` characters: tokenizing a 5 MB text to keep
    its first 512 tokens would otherwise take seconds and a gigabyte. Such a cut prefix has at least
    ``max_seq_length + TRUNCATION_SLACK`` tokens (see :func:`max_token_chars`), of which only the last
    few can differ from the full text's; when it has fewer (a tokenizer that breaks the bound), the text
    is tokenized in full. Texts that fit are never cut, so their ids are exactly the tokenizer's.
    ``first_index``: the index of ``texts[0]`` in the caller's list, for error messages."""
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError(
            "append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token or "
            "build the model with append_eos=False."
        )
    keep = max_seq_length + TRUNCATION_SLACK
    cap = keep * max_token_chars(tokenizer)
    room = cap - len(prefix)  # characters of a text that fit next to the prompt
    cut = [i for i, text in enumerate(texts) if len(text) > room]
    if cut:
        inputs = [prefix + text if len(text) <= room else prefix[:cap] + text[: max(room, 0)] for text in texts]
    else:
        inputs = [prefix + text for text in texts] if prefix else texts
    ids = _run_tokenizer(tokenizer, inputs, list(range(first_index, first_index + len(texts))), prefix)
    for i in cut:
        if len(ids[i]) < keep:  # fewer tokens than the bound promises: the cut may have changed the kept ones
            ids[i] = _run_tokenizer(tokenizer, [prefix + texts[i]], [first_index + i], prefix)[0]
    budget = max_seq_length - 1 if append_eos else max_seq_length
    truncated = 0
    for i, row in enumerate(ids):
        if append_eos and row and row[-1] == eos_id and len(row) <= max_seq_length:
            continue  # the tokenizer already ended it with EOS and it fits: as is (no copies)
        if append_eos and row and row[-1] == eos_id:
            row = row[:-1]  # the tokenizer added EOS itself: place ours after truncation instead
        if len(row) > budget:
            truncated += 1
            row = row[:budget]
        ids[i] = row + [eos_id] if append_eos else row
        if not ids[i]:
            raise ValueError(
                f"encode(): text {first_index + i} {texts[i]!r:.80} produced no tokens; embed non-empty text or use "
                "append_eos=True."
            )
    return ids, truncated


def prompt_token_count(tokenizer, prefix: str) -> int:
    """Tokens of the prompt alone (special tokens included, as the texts get them; a trailing EOS the
    tokenizer appends itself not counted: EOS is budgeted apart). Counted once per tokenizer and
    prompt, as :func:`max_token_chars` is (again when tokens are added), so that a call of ``encode``
    or a training batch pays a dictionary lookup, not a tokenizer call."""
    size = len(tokenizer)
    with _VOCAB_LOCK:
        cached = _PROMPT_TOKENS.get(tokenizer)
        if cached is None or cached[0] != size:
            cached = _PROMPT_TOKENS[tokenizer] = (size, {})
        count = cached[1].get(prefix)
    if count is None:
        ids = _run_tokenizer(tokenizer, [prefix], [0], prefix)[0]
        count = len(ids) - (1 if ids and ids[-1] == tokenizer.eos_token_id else 0)
        with _VOCAB_LOCK:
            cached[1][prefix] = count
    return count


def check_prompt_fits(tokenizer, prefix: str, max_seq_length: int, append_eos: bool) -> None:
    """Refuse a prompt that fills the token budget by itself: every text would be cut away entirely and
    embed to one and the same vector, which the truncation warning ("k of n texts were truncated")
    does not say."""
    if not prefix:
        return
    count = prompt_token_count(tokenizer, prefix)
    budget = max_seq_length - 1 if append_eos else max_seq_length
    if count >= budget:
        raise ValueError(
            f"the prompt {prefix!r:.80} takes {count} tokens, and max_seq_length={max_seq_length} leaves "
            f"{budget} for prompt and text{' (EOS aside)' if append_eos else ''}: no token of any text would remain, "
            "and every text would embed to the same vector. Raise max_seq_length (model.config.max_seq_length) or "
            "use a shorter prompt."
        )


def pad_arrays(rows: list[list[int]], pad_id: int, padding_side: str) -> np.ndarray:
    """Token id lists padded into one ``(2, B, T)`` int64 array: ids, then the attention mask.
    Built with two numpy fills (no per-row tensor work), as one block so that it moves to a
    device in a single copy."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    positions = np.arange(width)
    if padding_side == "right":
        mask = positions < lengths[:, None]
    else:
        mask = positions >= (width - lengths)[:, None]
    out = np.empty((2, len(rows), width), dtype=np.int64)
    out[0] = pad_id
    # boolean assignment fills row-major, i.e. in the order of the concatenated rows (both sides)
    out[0][mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    out[1] = mask
    return out


def pad_batch(rows: list[list[int]], pad_id: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to a (B, T) id tensor and attention mask."""
    input_ids, attention_mask = torch.from_numpy(pad_arrays(rows, pad_id, padding_side)).unbind(0)
    return input_ids, attention_mask


# Train / eval modes of one model shared by threads: ``encode`` calls (eval mode), passes in training mode
# (a training step's forward), and ``train()`` / ``eval()`` calls, ordered by one condition. Kept here, keyed
# by ``id(model)`` with entries only while something runs, not on the model: it stays picklable and copyable.
_MODE_CONDITION = threading.Condition(threading.RLock())
_ACTIVE_ENCODES: dict[int, _EncodeCalls] = {}
_TRAINING_PASSES: dict[int, dict[int, int]] = {}  # id(model) -> thread -> passes in training mode running


class _EncodeCalls:
    """The ``encode`` calls running on one model: how many, in which threads, the modules the first one
    switched to eval mode (the last one switches them back), and whether another thread asked for eval
    mode meanwhile (then they stay in eval mode)."""

    def __init__(self, switched: list[torch.nn.Module]):
        self.calls, self.threads, self.switched, self.eval_requested = 0, {}, switched, False


def _count(table: dict[int, int], thread: int, step: int) -> None:
    table[thread] = table.get(thread, 0) + step
    if not table[thread]:
        del table[thread]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration of an ``encode`` call, safe with several threads
    encoding on one model: the first call to enter records which modules were in training mode and
    switches them to eval, the last to leave switches exactly those back. Switching per call instead
    would let one thread turn dropout back on while another is still encoding. A model with no module
    in training mode is not touched at all. Modules are put back by their ``training`` flag, as
    ``Module.train`` sets it, so that a submodule the caller kept in eval mode (a frozen backbone) stays so.

    With other threads: the call first waits for passes in training mode running in them
    (:func:`training_pass`: a training step's forward would lose its dropout half-way); while calls run,
    ``model.train()`` from another thread waits for them to end, and ``model.eval()`` is kept (the modules
    are not switched back; :meth:`EncodeMixin.train`)."""
    key, me = id(model), threading.get_ident()
    with _MODE_CONDITION:
        _MODE_CONDITION.wait_for(lambda: not set(_TRAINING_PASSES.get(key, ())) - {me})
        state = _ACTIVE_ENCODES.get(key)
        if state is None:
            training = [module for module in model.modules() if module.training]
            if training:
                model.eval()
            state = _ACTIVE_ENCODES[key] = _EncodeCalls(training)
        state.calls += 1
        _count(state.threads, me, 1)
    try:
        yield
    finally:
        with _MODE_CONDITION:
            state.calls -= 1
            _count(state.threads, me, -1)
            if state.calls == 0:
                del _ACTIVE_ENCODES[key]
                if not state.eval_requested:
                    for module in state.switched:
                        module.training = True
                _MODE_CONDITION.notify_all()


@contextmanager
def training_pass(model: torch.nn.Module) -> Iterator[None]:
    """Around each pass of the model (``embed``): one that starts while another thread's ``encode`` holds
    the model in eval mode waits for it, so that it runs in the mode its caller set (a training loop
    that called ``model.train()`` once, then a forward per step: its steps ran without dropout), and a
    pass in training mode is recorded, so that an ``encode`` waits for it rather than switching its
    dropout off half-way (or between GradCache's two passes). Passes of the ``encode`` calls themselves,
    and of a model no ``encode`` switched, do not wait."""
    key, me = id(model), threading.get_ident()
    with _MODE_CONDITION:
        state = _ACTIVE_ENCODES.get(key)
        if state is not None and state.switched and me not in state.threads:
            _MODE_CONDITION.wait_for(lambda: key not in _ACTIVE_ENCODES)
        training = model.training
        if training:
            _count(_TRAINING_PASSES.setdefault(key, {}), me, 1)
    try:
        yield
    finally:
        if training:
            with _MODE_CONDITION:
                _count(_TRAINING_PASSES[key], me, -1)
                if not _TRAINING_PASSES[key]:
                    del _TRAINING_PASSES[key]
                    _MODE_CONDITION.notify_all()


def check_embeddings(embeddings: torch.Tensor, normalized: bool) -> None:
    """Raise if any row is not a usable vector: non-finite values, or all zeros where the rows should
    be L2-normalised (``F.normalize`` returns a zero vector for a zero input, silently). Such rows come
    from corrupt weights or a float16 overflow and would otherwise rank as ordinary vectors (NaN
    scores sort arbitrarily). One reduction over the whole call's output (the largest absolute value
    per row: NaN if any value is NaN, inf if any is infinite, 0 only for a zero row) and one host sync,
    so batches still run without waiting on the device."""
    largest = embeddings.abs().amax(dim=-1)
    bad = ~torch.isfinite(largest)
    if normalized:
        bad |= largest == 0
    if not bool(bad.any()):
        return
    indices = bad.nonzero().flatten().tolist()
    nonfinite = int((~torch.isfinite(largest)).sum())
    shown = ", ".join(map(str, indices[:5])) + (", ..." if len(indices) > 5 else "")
    problems = []
    if nonfinite:
        problems.append(f"{nonfinite} with NaN or infinite values")
    if len(indices) > nonfinite:
        problems.append(f"{len(indices) - nonfinite} all zeros, which cannot be L2-normalised")
    raise ValueError(
        f"encode(): {len(indices)} of {len(embeddings)} texts got no valid embedding ({'; '.join(problems)}): "
        f"texts {shown}. The model's weights likely hold NaN/inf (check the checkpoint: "
        "[name for name, p in model.named_parameters() if not p.isfinite().all()]), or activations overflowed "
        "in float16: load the model in torch.bfloat16 or torch.float32."
    )


SENTENCE_TRANSFORMERS_ONLY = {
    "truncate_dim": "the embedding size is fixed by the model (config.output_dim); to cut Matryoshka-style, "
                    "slice embeddings[..., :dim] and L2-normalise them again",
    "pool": "multi-process encoding is not supported; encode on one device (device=... or model.to(...))",
    "chunk_size": "multi-process encoding is not supported; encode on one device (device=... or model.to(...))",
    "task": "an LLMEmbeddingModel has no task router; use encode_query() / encode_document() or prompt_name= "
            "for queries and documents",
    "processing_kwargs": "tokenization follows the model's config; change config.max_seq_length, "
                         "config.append_eos or config.padding_side instead",
}
"""``SentenceTransformer.encode`` arguments that ``encode`` does not support, and what to do instead.
Passed as ``None`` (their default: nothing asked) they are accepted; any other value is refused, so
that no call silently gets something other than what it asked for."""


def check_extra_arguments(kwargs: dict[str, Any]) -> None:
    """Refuse ``encode`` keyword arguments it does not take, naming the alternative for the
    sentence-transformers ones (see :data:`SENTENCE_TRANSFORMERS_ONLY`)."""
    for name, value in kwargs.items():
        if name not in SENTENCE_TRANSFORMERS_ONLY:
            raise TypeError(f"encode() got an unexpected keyword argument {name!r}")
        if value is not None:
            raise ValueError(f"encode({name}={value!r}) is not supported: {SENTENCE_TRANSFORMERS_ONLY[name]}.")


def check_count(value, name: str, caller: str = "encode()") -> int:
    """``value`` as an ``int``: any integer type (a numpy integer from a config or an argument parser,
    through ``operator.index``), at least 1; ``bool`` and non-integers are refused, naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{caller}: {name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if number < 1:
        raise ValueError(f"{caller}: {name} must be a positive integer, got {number}")
    return number


def check_batch_size(batch_size) -> int:
    """``encode``'s ``batch_size`` (:func:`check_count`)."""
    return check_count(batch_size, "batch_size")


def resolve_normalize(normalize: bool | None, normalize_embeddings: bool | None) -> bool | None:
    """The ``normalize`` value for ``forward`` (None: ``config.normalize``) from llm_embed's and
    sentence-transformers' arguments. ``normalize_embeddings=True`` L2-normalises; ``False`` (its
    default in sentence-transformers) adds no normalisation of its own and leaves the model's setting
    in charge, exactly as ``SentenceTransformer.encode(normalize_embeddings=False)`` still returns
    unit vectors from a model that normalises. ``normalize=False`` is the way to raw vectors, so
    ``normalize=False`` with ``normalize_embeddings=True`` asks for both and is refused."""
    for name, value in (("normalize", normalize), ("normalize_embeddings", normalize_embeddings)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"encode(): {name} must be True, False or None (config.normalize), got {value!r}")
    normalize = None if normalize is None else bool(normalize)  # a numpy bool (from a mask or a config) is one
    normalize_embeddings = None if normalize_embeddings is None else bool(normalize_embeddings)
    if normalize is False and normalize_embeddings:
        raise ValueError(
            "encode(): normalize=False asks for raw vectors and normalize_embeddings=True for L2-normalised ones; "
            "pass one of them (normalize_embeddings is sentence-transformers' name, normalize llm_embed's)."
        )
    if normalize is not None:
        return normalize
    return True if normalize_embeddings else None


def embedding_rows(embeddings, name: str) -> torch.Tensor:
    """``embeddings`` for :meth:`EncodeMixin.similarity` as a 2-D float32 tensor: a 2-D array or tensor
    as it is, a 1-D one as one row, a list of 1-D ones stacked (what ``encode`` returns, whatever the
    ``convert_to_*`` flags)."""
    if isinstance(embeddings, (list, tuple)):
        if not embeddings:
            raise ValueError(f"similarity(): {name} is empty")
        embeddings = torch.stack([torch.as_tensor(row) for row in embeddings])
    elif not isinstance(embeddings, (torch.Tensor, np.ndarray)):
        raise TypeError(f"similarity(): {name} must be embeddings (a numpy array, a tensor or a list of them, as "
                        f"encode returns), got {type(embeddings).__name__}")
    rows = torch.as_tensor(embeddings)
    if rows.ndim == 1:
        rows = rows.unsqueeze(0)
    if rows.ndim != 2 or not (rows.is_floating_point() or rows.dtype in (torch.int8, torch.uint8)):
        raise ValueError(f"similarity(): {name} must be one vector or a 2-D batch of vectors, got shape "
                         f"{tuple(rows.shape)} of {rows.dtype}")
    return rows.float()


def check_same_width(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape[-1] != second.shape[-1]:
        raise ValueError(f"similarity(): the embeddings have {first.shape[-1]} and {second.shape[-1]} dimensions; "
                         "compare embeddings of one model")


EncodeOutput = np.ndarray | torch.Tensor | list[torch.Tensor]
"""What ``encode`` returns; which one is fixed by ``convert_to_numpy`` / ``convert_to_tensor`` and by
the input being one string or a list (see the overloads of :meth:`EncodeMixin.encode`)."""


class EncodeMixin:
    """Adds ``encode``, ``encode_query`` and ``encode_document`` to :class:`LLMEmbeddingModel` (needs
    ``tokenizer``, ``config``, ``device``, ``forward``). The signatures are sentence-transformers'
    (``SentenceTransformer.encode``), so the same user code runs on either."""

    def train(self, mode: bool = True):
        """``Module.train``, ordered with ``encode`` calls running in other threads (:func:`eval_mode`):
        ``train()`` waits for them to end, since switching dropout on under them changed their vectors
        (by up to 0.17 on a tiny GPT-2); ``eval()`` returns at once and the model stays in eval mode when
        they end (they used to switch their modules back to training mode over the caller's choice)."""
        key, me = id(self), threading.get_ident()
        with _MODE_CONDITION:
            state = _ACTIVE_ENCODES.get(key)
            if state is not None and me not in state.threads:
                if not mode:
                    state.eval_requested = True  # every module is in eval mode while they run
                    return self
                _MODE_CONDITION.wait_for(lambda: key not in _ACTIVE_ENCODES)
            return super().train(mode)

    # Overloads, as sentence-transformers types them: the return type follows convert_to_tensor /
    # convert_to_numpy and, without either, the input (one string: one tensor; a list: a list of them).
    # Numpy and tensor results are 1-D for one string and 2-D for a list.
    @overload
    def encode(
        self,
        inputs: str | Sequence[str],
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        *,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Literal["float32"] | None = ...,
        convert_to_numpy: Literal[True] = ...,
        convert_to_tensor: Literal[False] = ...,
        device: str | torch.device | None = ...,
        normalize_embeddings: bool | None = ...,
        normalize: bool | None = ...,
        packing: bool | None = ...,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        inputs: str | Sequence[str],
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        *,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Literal["float32"] | None = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: Literal[True],
        device: str | torch.device | None = ...,
        normalize_embeddings: bool | None = ...,
        normalize: bool | None = ...,
        packing: bool | None = ...,
    ) -> torch.Tensor: ...

    @overload
    def encode(
        self,
        inputs: str,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        *,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Literal["float32"] | None = ...,
        convert_to_numpy: Literal[False],
        convert_to_tensor: Literal[False] = ...,
        device: str | torch.device | None = ...,
        normalize_embeddings: bool | None = ...,
        normalize: bool | None = ...,
        packing: bool | None = ...,
    ) -> torch.Tensor: ...

    @overload
    def encode(
        self,
        inputs: Sequence[str],
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        *,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Literal["float32"] | None = ...,
        convert_to_numpy: Literal[False],
        convert_to_tensor: Literal[False] = ...,
        device: str | torch.device | None = ...,
        normalize_embeddings: bool | None = ...,
        normalize: bool | None = ...,
        packing: bool | None = ...,
    ) -> list[torch.Tensor]: ...

    @overload  # catch-all, for flags only known at run time (and the older keyword, sentences=)
    def encode(
        self,
        inputs: str | Sequence[str] = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        *,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Literal["float32"] | None = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: bool = ...,
        device: str | torch.device | None = ...,
        normalize_embeddings: bool | None = ...,
        normalize: bool | None = ...,
        packing: bool | None = ...,
        sentences: str | Sequence[str] = ...,
    ) -> EncodeOutput: ...

    def encode(
        self,
        inputs: str | Sequence[str] | np.ndarray = NOT_GIVEN,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        *,
        show_progress_bar: bool | None = None,
        output_value: str = "sentence_embedding",
        precision: str | None = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
        normalize_embeddings: bool | None = None,
        normalize: bool | None = None,
        packing: bool | None = None,
        sentences: str | Sequence[str] | np.ndarray = NOT_GIVEN,
        **kwargs: Any,
    ) -> EncodeOutput:
        """Embed texts. Takes sentence-transformers' arguments (``SentenceTransformer.encode``) and
        returns what it returns for them; arguments after ``batch_size`` are keyword-only, so that a
        positional argument can never land on another parameter than the caller meant.

        Args:
            inputs: one string (returns one vector, 1-D) or a list (tuple, 1-D numpy array) of strings
                (returns one row per text, 2-D). ``sentences=`` is accepted as its older name, as in
                sentence-transformers (not both at once).
            prompt_name: a key of ``config.prompts``, or ``"query"`` / ``"document"``, which every model
                has as in sentence-transformers (no prefix where ``config.prompts`` lacks them), or
            prompt: a literal prefix; at most one of the two. Default: ``config.default_prompt_name``.
                For retrieval, :meth:`encode_query` / :meth:`encode_document` pick the side's prompt.
            batch_size: the size of one forward pass. Padded (the default under SDPA / eager): texts
                per pass, after sorting by length. Packed (``packing``): each piece of the call (see
                :func:`tokenize_pieces`: the first ``2 x batch_size`` texts, then up to 4,096) is packed
                into rows as long as its longest text (``L``) and a pass takes at most ``batch_size`` rows,
                i.e. a budget of ``batch_size x L`` tokens (the largest padded batch), which usually
                holds more than ``batch_size`` texts (see :func:`~llm_embed.packing.plan_packed_batches`).
            show_progress_bar: defaults to showing it when logging is at INFO or more verbose.
            output_value: only ``"sentence_embedding"``; token embeddings are not returned by
                ``encode`` (run the backbone, ``model.backbone(...)``, for those).
            precision: only ``"float32"`` (or None, which sentence-transformers reads as it); to
                quantize, pass the result to sentence-transformers' ``quantize_embeddings``.
            convert_to_numpy / convert_to_tensor: as in sentence-transformers. ``convert_to_tensor=True``
                wins: one tensor on the model's device, in the model's dtype. Else
                ``convert_to_numpy=True`` (default): a numpy ``float32`` array on the CPU, whatever the
                model's dtype. Both ``False``: a list of 1-D tensors on the model's device (one tensor
                for one string).
            device: None (the model's device) or one device, to which the model is moved first, as
                sentence-transformers does; a list (multi-process encoding) is not supported.
            normalize_embeddings: sentence-transformers' switch: ``True`` L2-normalises; ``False`` or
                None leaves it to ``config.normalize`` (see :func:`resolve_normalize`).
            normalize: llm_embed's switch: ``True`` / ``False`` L2-normalise or not, whatever
                ``config.normalize`` says; None: ``config.normalize``. ``normalize=False`` with
                ``normalize_embeddings=True`` contradict each other and raise ``ValueError``.
            packing: run the texts packed end to end, without padding (``llm_embed.packing``).
                ``None`` (default): with ``flex_attention`` or ``flash_attention_*`` backbones, and on
                CUDA with SDPA backbones that support flex attention (switched to ``SDPA_WITH_FLEX``:
                flex for packed batches only, :func:`~llm_embed.packing.call_packing_mode`);
                ``True``: always (with SDPA / eager through a dense block-diagonal mask, slower);
                ``False``: never. Results equal the padded ones up to floating-point rounding.

        The other arguments of ``SentenceTransformer.encode`` (``truncate_dim``, ``pool``,
        ``chunk_size``, ``task``, ``processing_kwargs``) are accepted only as None and otherwise
        refused with the reason (:data:`SENTENCE_TRANSFORMERS_ONLY`); so is a conflicting pair of
        ``prompt`` and ``prompt_name``, which sentence-transformers resolves with a warning.

        Raises ``ValueError`` rather than return a row that is not a vector (NaN / inf values, or all
        zeros when normalising): see :func:`check_embeddings`. Several threads may encode on one model
        at once (:func:`eval_mode`).
        """
        check_extra_arguments(kwargs)
        texts, single = check_texts(resolve_inputs(inputs, sentences))
        normalize = resolve_normalize(normalize, normalize_embeddings)
        if output_value != "sentence_embedding":
            raise ValueError(
                f"encode(output_value={output_value!r}) is not supported: encode returns sentence embeddings "
                "only; for token states, run the backbone: model.backbone(input_ids=..., attention_mask=...)."
            )
        if precision is not None and precision != "float32":  # None: sentence-transformers' float32 too
            raise ValueError(
                f"encode(precision={precision!r}) is not supported: encode returns float32 embeddings; quantize "
                "them with sentence_transformers.quantization.quantize_embeddings(embeddings, precision=...)."
            )
        batch_size = check_batch_size(batch_size)
        config = self.config
        prefix = resolve_prompt(config.prompts, config.default_prompt_name, prompt_name, prompt)
        self._move_for_encode(device)
        embeddings = self._embed_texts(texts, prefix, batch_size, normalize, show_progress_bar, packing)
        normalized = config.normalize if normalize is None else normalize
        if convert_to_numpy and not convert_to_tensor:
            # checked after the one copy to the host, so the check adds no wait for the device
            embeddings = embeddings.float().cpu()
            check_embeddings(embeddings, normalized)
            return embeddings[0].numpy() if single else embeddings.numpy()
        check_embeddings(embeddings, normalized)  # one read-back per call, never per batch
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        return embeddings if single else list(embeddings)

    # encode_query / encode_document take every argument of encode; overloads as for encode, shortened.
    @overload
    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = ..., prompt: str | None = ...,
                     batch_size: int = ..., *, convert_to_numpy: Literal[True] = ...,
                     convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> np.ndarray: ...

    @overload
    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = ..., prompt: str | None = ...,
                     batch_size: int = ..., *, convert_to_numpy: bool = ..., convert_to_tensor: Literal[True],
                     **kwargs: Any) -> torch.Tensor: ...

    @overload
    def encode_query(self, inputs: str, prompt_name: str | None = ..., prompt: str | None = ...,
                     batch_size: int = ..., *, convert_to_numpy: Literal[False],
                     convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> torch.Tensor: ...

    @overload
    def encode_query(self, inputs: Sequence[str], prompt_name: str | None = ..., prompt: str | None = ...,
                     batch_size: int = ..., *, convert_to_numpy: Literal[False],
                     convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> list[torch.Tensor]: ...

    @overload
    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = ..., prompt: str | None = ...,
                     batch_size: int = ..., *, convert_to_numpy: bool = ..., convert_to_tensor: bool = ...,
                     **kwargs: Any) -> EncodeOutput: ...

    def encode_query(self, inputs: str | Sequence[str] | np.ndarray = NOT_GIVEN, prompt_name: str | None = None,
                     prompt: str | None = None, batch_size: int = 32, **kwargs: Any) -> EncodeOutput:
        """:meth:`encode` for queries. Without ``prompt_name`` / ``prompt``, it uses the model's prompt
        named ``"query"`` (``config.prompts["query"]``), or none when the model has no such prompt,
        never ``config.default_prompt_name``: sentence-transformers' ``encode_query`` rule, so a query
        embeds the same through either library. An explicit ``prompt_name`` or ``prompt`` wins. Every
        other argument is :meth:`encode`'s."""
        prompt = self._side_prompt("query", prompt_name, prompt)
        return self.encode(inputs, prompt_name, prompt, batch_size, **kwargs)

    @overload
    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = ...,
                        prompt: str | None = ..., batch_size: int = ..., *, convert_to_numpy: Literal[True] = ...,
                        convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> np.ndarray: ...

    @overload
    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = ...,
                        prompt: str | None = ..., batch_size: int = ..., *, convert_to_numpy: bool = ...,
                        convert_to_tensor: Literal[True], **kwargs: Any) -> torch.Tensor: ...

    @overload
    def encode_document(self, inputs: str, prompt_name: str | None = ..., prompt: str | None = ...,
                        batch_size: int = ..., *, convert_to_numpy: Literal[False],
                        convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> torch.Tensor: ...

    @overload
    def encode_document(self, inputs: Sequence[str], prompt_name: str | None = ..., prompt: str | None = ...,
                        batch_size: int = ..., *, convert_to_numpy: Literal[False],
                        convert_to_tensor: Literal[False] = ..., **kwargs: Any) -> list[torch.Tensor]: ...

    @overload
    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = ...,
                        prompt: str | None = ..., batch_size: int = ..., *, convert_to_numpy: bool = ...,
                        convert_to_tensor: bool = ..., **kwargs: Any) -> EncodeOutput: ...

    def encode_document(self, inputs: str | Sequence[str] | np.ndarray = NOT_GIVEN,
                        prompt_name: str | None = None, prompt: str | None = None, batch_size: int = 32,
                        **kwargs: Any) -> EncodeOutput:
        """:meth:`encode` for documents (passages, corpus entries): as :meth:`encode_query`, with the
        model's prompt named ``"document"`` (none when it has none)."""
        prompt = self._side_prompt("document", prompt_name, prompt)
        return self.encode(inputs, prompt_name, prompt, batch_size, **kwargs)

    def _side_prompt(self, side: str, prompt_name: str | None, prompt: str | None) -> str | None:
        """``prompt`` for ``encode`` from ``encode_query`` / ``encode_document``: the caller's when
        given (``encode`` checks it), else the side's prefix (:func:`side_prompt_name`)."""
        if prompt_name is not None or prompt is not None:
            return prompt
        prompts = self.config.prompts
        return resolve_prompt(prompts, side_prompt_name(prompts, side), None, None)

    # ------------------------------------------------------------------ the rest of SentenceTransformer's surface
    # What code written for a SentenceTransformer reads besides encode: the similarity of two sets of
    # embeddings, their size, and the settings sentence-transformers keeps on the model (here the config's).

    @property
    def similarity_fn_name(self) -> str:
        """``"cosine"``: how these embeddings are compared (also what a save writes for sentence-transformers)."""
        return "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        name = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum, or its name
        if name != "cosine":
            raise ValueError(
                f"similarity_fn_name={name!r} is not supported: an llm_embed model compares embeddings by cosine "
                "(model.similarity), the name its saves give sentence-transformers. For another score compute it "
                "from the vectors, e.g. emb1 @ emb2.T for the dot product of encode(..., normalize=False) outputs."
            )

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity of every row of ``embeddings1`` with every row of ``embeddings2``: a
        ``(N1, N2)`` float32 tensor, as ``SentenceTransformer.similarity`` returns. Each side is a 2-D
        (or, for one vector, 1-D) numpy array or tensor, or a list of 1-D ones."""
        first, second = embedding_rows(embeddings1, "embeddings1"), embedding_rows(embeddings2, "embeddings2")
        check_same_width(first, second)
        second = second.to(first.device)
        return torch.nn.functional.normalize(first, dim=-1) @ torch.nn.functional.normalize(second, dim=-1).T

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity of ``embeddings1[i]`` with ``embeddings2[i]``: an ``(N,)`` float32 tensor, as
        ``SentenceTransformer.similarity_pairwise`` returns; both sides hold the same number of rows."""
        first, second = embedding_rows(embeddings1, "embeddings1"), embedding_rows(embeddings2, "embeddings2")
        check_same_width(first, second)
        if first.shape[0] != second.shape[0]:
            raise ValueError(f"similarity_pairwise(): embeddings1 has {first.shape[0]} rows and embeddings2 "
                             f"{second.shape[0]}; pairs need as many of each (similarity() compares every row "
                             "with every row)")
        second = second.to(first.device)
        return torch.nn.functional.cosine_similarity(first, second, dim=-1)

    def get_embedding_dimension(self) -> int:
        """Size of the vectors ``encode`` returns (``config.embedding_dim``)."""
        return self.config.embedding_dim

    def get_sentence_embedding_dimension(self) -> int:
        """:meth:`get_embedding_dimension` under sentence-transformers' older name."""
        return self.get_embedding_dimension()

    @property
    def max_seq_length(self) -> int:
        """``config.max_seq_length``: the token budget of one text (checked when set)."""
        return self.config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.config.max_seq_length = value

    @property
    def prompts(self) -> dict[str, str]:
        """``config.prompts``: the named prefixes (``"query"`` / ``"document"`` work even when absent)."""
        return self.config.prompts

    @prompts.setter
    def prompts(self, value: dict[str, str]) -> None:
        self.config.prompts = value

    @property
    def default_prompt_name(self) -> str | None:
        """``config.default_prompt_name``: the prompt ``encode`` uses when given none."""
        return self.config.default_prompt_name

    @default_prompt_name.setter
    def default_prompt_name(self, value: str | None) -> None:
        self.config.default_prompt_name = value

    def _move_for_encode(self, device) -> None:
        """``encode(device=...)``: move the model there first, as sentence-transformers does (and keep it
        there). Refused where the placement is not one device to move to."""
        if device is None:
            return
        if isinstance(device, (list, tuple)):
            raise ValueError(
                f"encode(device={device!r}): multi-process encoding over several devices is not supported; pass "
                "one device, or run one model per device yourself."
            )
        try:
            target = torch.empty(0, device=device).device  # canonical: "cuda" -> cuda:0, "cpu:0" -> cpu
        except (RuntimeError, AssertionError, NotImplementedError, TypeError) as error:
            # torch says "Torch not compiled with CUDA enabled" (an AssertionError) and the like
            has = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
                ["mps"] if torch.backends.mps.is_available() else [])
            raise ValueError(f"encode(device={device!r}): this torch cannot place the model there "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:120]}); devices here: "
                             f"{', '.join(has)}") from error
        if target == self.device:
            return
        if getattr(self, "hf_device_map", None):
            raise ValueError(
                f"encode(device={device!r}): this model was loaded with a device_map, which places its layers; "
                "encode runs where they are: leave device=None, or load the model without device_map and "
                "move it with model.to(device)."
            )
        self.to(target)

    def _embed_texts(self, texts: list[str], prefix: str, batch_size: int, normalize: bool | None,
                     show_progress_bar: bool | None, packing: bool | None,
                     counts: dict[str, int] | None = None) -> torch.Tensor:
        """``(len(texts), dim)`` embeddings in the texts' order, on the model's device, not yet checked
        (:func:`check_embeddings`; ``encode`` checks them where the check costs no extra wait).

        The call is cut into pieces (:func:`tokenize_pieces`: small at first where the call packs, else
        ``MAX_PIECE_TEXTS`` texts). Each piece is tokenized, batched (sorted by length and padded, or
        packed) and run through ``forward``; the next piece is tokenized in a background thread
        meanwhile (the tokenizers library releases the GIL), so tokenizing overlaps the device's work
        whatever ``TOKENIZERS_PARALLELISM`` says (not on the CPU, see ``OVERLAP_ON_CPU``). Nothing in
        the loop reads a value back from the device: the batches are queued and the host runs ahead;
        the order is restored with one index copied asynchronously from pinned memory.

        ``counts``: if given, the call adds its ``tokens`` (as the model sees them) and ``truncated``
        texts to it and leaves the truncation warning to the caller (``llm_embed.corpus`` reports per
        run, and would otherwise tokenize every text a second time to count)."""
        self.check_built_design()
        config = self.config
        tokenizer = self.tokenizer
        pad_id = resolve_pad_id(tokenizer)
        check_prompt_fits(tokenizer, prefix, config.max_seq_length, config.append_eos)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        device = self.device
        # the design, not backbone.config.is_causal, which a natively bidirectional backbone keeps True
        is_causal = config.attention == "causal"
        chunks, produced = [], []  # embeddings per batch; the text indices they belong to, in that order
        truncated = 0
        progress = tqdm(total=len(texts), desc="Texts", unit="text", disable=not show_progress_bar)
        with eval_mode(self), torch.inference_mode(), progress:
            overlap = device.type != "cpu" or OVERLAP_ON_CPU
            # Small first pieces only where the call packs: padded batches are sorted by length within
            # a piece, and small pieces would cost 10-13 % more padding (docs/performance.md).
            small_first = overlap and call_packing_mode(self, packing) is not None
            first_piece = FIRST_PIECE_BATCHES * batch_size if small_first else max(MAX_PIECE_TEXTS, batch_size)
            for first, ids, cut in tokenize_pieces(tokenizer, texts, batch_size, config.max_seq_length,
                                                   config.append_eos, prefix, overlap=overlap,
                                                   first_piece=first_piece):
                truncated += cut
                lengths = [len(row) for row in ids]
                if counts is not None:
                    counts["tokens"] = counts.get("tokens", 0) + sum(lengths)
                packing_mode = resolve_packing(self, packing, max(lengths))
                if packing_mode is not None:
                    for plan in plan_packed_batches(lengths, batch_size, packing_mode):
                        packed = pack_batch([ids[i] for i in plan.texts], pad_id, mode=packing_mode,
                                            is_causal=is_causal, row_texts=plan.row_texts,
                                            row_length=plan.row_length, device=device, dtype=self.dtype)
                        chunks.append(self(packed=packed, normalize=normalize).embeddings)
                        produced.extend(first + i for i in plan.texts)
                        progress.update(len(plan.texts))
                    continue
                order = sorted(range(len(ids)), key=lambda i: -lengths[i])
                for start in range(0, len(order), batch_size):
                    plan = order[start : start + batch_size]
                    block = host_to_device(pad_arrays([ids[i] for i in plan], pad_id, config.padding_side), device)
                    input_ids, attention_mask = block.unbind(0)
                    chunks.append(self(input_ids=input_ids, attention_mask=attention_mask,
                                       normalize=normalize).embeddings)
                    produced.extend(first + i for i in plan)
                    progress.update(len(plan))
        if counts is None:
            warn_truncated(truncated, len(texts), config.max_seq_length)
        else:
            counts["truncated"] = counts.get("truncated", 0) + truncated
        batch_embeddings = torch.cat(chunks)
        inverse = np.empty(len(produced), dtype=np.int64)
        inverse[np.asarray(produced, dtype=np.int64)] = np.arange(len(produced), dtype=np.int64)
        return batch_embeddings[host_to_device(inverse, batch_embeddings.device)]


FIRST_PIECE_BATCHES = 2
"""Batches in the first piece of an ``encode`` call: small, so the device starts early."""
MAX_PIECE_TEXTS = 4096
"""Texts in a later piece at most (each piece is twice the previous one up to this): large enough that
sorting by length within a piece leaves about as little padding as sorting the whole call."""


OVERLAP_ON_CPU = False
"""Whether a model on the CPU also tokenizes the next piece in a worker thread. Off: there the model's
own threads already use every core, so a tokenizing thread competes with them instead of filling idle
time (it pays on an accelerator, whose host thread waits otherwise)."""


def piece_bounds(count: int, batch_size: int, first_piece: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each piece of a call of ``count`` texts: ``first_piece`` texts, then pieces
    twice as large up to ``MAX_PIECE_TEXTS`` (or ``batch_size`` if larger)."""
    bounds, start, size = [], 0, max(first_piece, 1)
    while start < count:
        bounds.append((start, min(start + size, count)))
        start, size = start + size, min(2 * size, max(MAX_PIECE_TEXTS, batch_size))
    return bounds


def tokenize_pieces(tokenizer, texts: list[str], batch_size: int, max_seq_length: int, append_eos: bool,
                    prefix: str, overlap: bool = True,
                    first_piece: int | None = None) -> Iterator[tuple[int, list[list[int]], int]]:
    """``(index of the piece's first text, its token ids, how many were truncated)`` for consecutive
    pieces of ``texts``: the first ``first_piece`` texts (default ``FIRST_PIECE_BATCHES x batch_size``),
    then pieces twice as large up to ``MAX_PIECE_TEXTS``. The first piece is tokenized on the caller's
    thread, each next one in a worker thread while the caller runs the current one (``overlap``; else
    each when it is reached). An error in any piece is raised when the caller reaches it, with the
    text's index in the whole call.

    ``encode`` starts small only when the call packs: a packed piece loses about 1 % of its token slots
    to being packed apart from the rest of the call, while a padded piece, sorted by length on its own,
    loses 10-13 % (2,048 STS-B sentences or 256 SciFact documents at batch 64, SmolLM2's tokenizer),
    more than tokenizing costs. A padded call starts with ``MAX_PIECE_TEXTS`` texts, so calls up to
    that size are sorted as a whole, and larger ones still tokenize their next piece meanwhile."""
    if first_piece is None:
        first_piece = FIRST_PIECE_BATCHES * batch_size
    bounds = piece_bounds(len(texts), batch_size, first_piece)

    def tokenize(bound: tuple[int, int]) -> tuple[int, list[list[int]], int]:
        first, end = bound
        ids, cut = tokenize_counting_truncation(tokenizer, texts[first:end], max_seq_length, append_eos, prefix,
                                                first_index=first)
        return first, ids, cut

    if len(bounds) == 1 or not overlap:
        for bound in bounds:
            yield tokenize(bound)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm_embed-tokenize") as pool:
        current = tokenize(bounds[0])  # on the caller's thread: nothing to overlap with yet
        for bound in bounds[1:]:
            pending = pool.submit(tokenize, bound)
            yield current
            current = pending.result()
        yield current


__all__ = [
    "NOT_GIVEN",
    "PROMPT_SIDES",
    "SENTENCE_TRANSFORMERS_ONLY",
    "TRUNCATION_SLACK",
    "EncodeMixin",
    "EncodeOutput",
    "check_batch_size",
    "check_embeddings",
    "check_extra_arguments",
    "check_texts",
    "eval_mode",
    "training_pass",
    "find_surrogate",
    "max_token_chars",
    "pad_arrays",
    "pad_batch",
    "piece_bounds",
    "resolve_inputs",
    "resolve_normalize",
    "resolve_pad_id",
    "resolve_prompt",
    "side_prompt_name",
    "tokenize_counting_truncation",
    "tokenize_pieces",
    "tokenize_texts",
    "warn_truncated",
]
