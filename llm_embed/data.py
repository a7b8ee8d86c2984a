"""Contrastive training data: rows of (query, positive, hard negatives) -> tokenized model batches.

Rows are dicts with a query (``query`` or ``anchor``), a ``positive`` and hard negatives
(``negative``: one string, ``negatives``: a list, or ``negative_1`` ... ``negative_n`` as
sentence-transformers' n-tuples; none at all is fine). They come from a
list, a JSONL file or a ``datasets`` dataset; :class:`TripletDataset` wraps all three as a plain
torch dataset. The Trainer must be told to pass rows through untouched with
``TrainingArguments(remove_unused_columns=False)``: their fields are not ``forward`` arguments.
:class:`ContrastiveDataCollator` applies the query / document prompts and tokenizes exactly
as ``encode`` does, producing the batch for which the model's ``forward`` returns the loss.

Every fault in the data fails when the dataset is built, not steps into training (when nothing
has been saved yet): each error names where the bad row is (``file:line`` for JSONL, ``row N``
for lists and datasets) and what to do about it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .encoding import check_prompt_fits, pad_batch, resolve_pad_id, resolve_prompt, tokenize_texts
from .tokenizer_setup import configure_tokenizer, tokenizer_settings

QUERY_FIELDS = ("query", "anchor")
ROW_FORMAT = ('{"query": ..., "positive": ..., "negative": ...} (or "anchor"; "negatives": [...]; "negative_1", '
              '"negative_2", ...; or no negatives)')
#: sentence-transformers' n-tuple columns (anchor, positive, negative_1 ... negative_n), as the Hub's
#: mined hard-negative datasets name them
NUMBERED_NEGATIVE = re.compile(r"negative_(\d+)")
#: what other formats call hard negatives (FlagEmbedding's "neg", "hard_negatives", "negative1"):
#: refused by name rather than left out of training
OTHER_NEGATIVE_NAME = re.compile(r"(hard_?)?neg(ative)?s?(_?\d+)?")


def validate_row(row, index: int, where: str | None = None) -> tuple[str, str, list[str]]:
    """(query, positive, negatives) of one row; a clear error for anything missing, null, empty or
    of the wrong type. ``where`` names the row in errors (default ``row {index}``; ``file:line``
    for JSONL, so that the user can open the file at the bad line)."""
    where = where or f"row {index}"
    if not isinstance(row, dict):
        raise TypeError(f"{where}: expected a dict with query/anchor, positive, negative(s); got {type(row).__name__}")
    if not row:
        raise ValueError(
            f"{where} arrived empty: the Trainer dropped its fields because they are not forward() "
            "arguments; pass TrainingArguments(remove_unused_columns=False)"
        )
    query_field = next((name for name in QUERY_FIELDS if name in row), None)
    missing = (["query (or anchor)"] if query_field is None else []) + ([] if "positive" in row else ["positive"])
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}; it has fields {sorted(row)}")
    if all(name in row for name in QUERY_FIELDS):
        raise ValueError(f"{where} has both 'query' and 'anchor' (one would be dropped); keep one")
    negatives = _negatives_of(row, where)
    texts = {query_field: row[query_field], "positive": row["positive"]}
    texts.update({f"negative {i}": text for i, text in enumerate(negatives)})
    for name, text in texts.items():
        if text is None:
            raise TypeError(f"{where}: {name} is null; give it a text, or remove the row")
        if not isinstance(text, str):
            raise TypeError(f"{where}: {name} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{where}: {name} is empty; remove the row or fill it in")
    return row[query_field], row["positive"], list(negatives)


def _negatives_of(row: dict, where: str) -> list:
    """The row's hard negatives as a list. A null or a non-list is refused rather than read as "no
    negatives": every row of a batch needs the same number, so a silently dropped negative would
    only fail later, in the middle of training. ``negative_1`` ... ``negative_n`` are the negatives in
    their numbers' order; a field that names negatives some other way is refused, not left out."""
    numbered = sorted((int(match[1]), name) for name in row if (match := NUMBERED_NEGATIVE.fullmatch(str(name))))
    fields = [name for name in ("negative", "negatives") if name in row] + ([numbered[0][1]] if numbered else [])
    if len(fields) > 1:
        shown = ["negative_1 ..." if name.startswith("negative_") else name for name in fields]
        raise ValueError(f"{where} has hard negatives in {' and '.join(map(repr, shown))}; keep one form")
    read = {"negative", "negatives", *(name for _, name in numbered)}
    unknown = sorted(name for name in map(str, row)
                     if name not in read and OTHER_NEGATIVE_NAME.fullmatch(name.lower()))
    if unknown:
        raise ValueError(f"{where} has field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}, which "
                         f"would not be read as hard negatives; rename to {ROW_FORMAT}")
    if numbered:
        numbers = [number for number, _ in numbered]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{where}: numbered negatives must be negative_1 ... negative_{len(numbers)} without "
                             f"gaps, found {', '.join(name for _, name in numbered)}")
        return [row[name] for _, name in numbered]
    field = "negatives" if "negatives" in row else "negative" if "negative" in row else None
    if field is None:
        return []
    negatives = row[field]
    if negatives is None:
        raise TypeError(
            f"{where}: '{field}' is null; give it a text (or a list of texts), or drop the field in every row "
            "to train with in-batch negatives only"
        )
    if isinstance(negatives, str):
        return [negatives]
    if not isinstance(negatives, (list, tuple)):
        raise TypeError(f"{where}: '{field}' must be a string or a list of strings, got {type(negatives).__name__}")
    return list(negatives)


def check_negative_counts(counts: Sequence[int], locations: Sequence[str]) -> None:
    """Refuse rows with different numbers of hard negatives anywhere in the data: the collator
    stacks K negatives per query, so a mixed batch would fail only once training reaches it."""
    first_of: dict[int, str] = {}
    for count, where in zip(counts, locations):
        first_of.setdefault(count, where)
    if len(first_of) > 1:
        listing = ", ".join(f"{count} (first at {where})" for count, where in sorted(first_of.items()))
        raise ValueError(
            f"rows have different numbers of hard negatives: {listing}; give every row the same number of hard "
            "negatives (or none)"
        )


def check_limit(limit) -> None:
    """Refuse a row limit below 1: ``0`` or a negative number would otherwise read as "no rows" or be
    ignored, and the run would train on something other than what was asked for."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"row limit {limit!r}: give a whole number of rows of at least 1, or no limit for every row")


class TripletDataset(Dataset):
    """Rows of contrastive training data, validated up front (a bad row fails before training starts).

    Args:
        rows: dicts with query (or anchor), positive, negative(s).
        locations: where each row came from, used in errors (``from_jsonl`` passes ``file:line``);
            default ``row {index}``. Kept as ``self.locations``.
        source: what the rows are (a file name) for the error when there are none.
    """

    def __init__(self, rows: Sequence[dict], locations: Sequence[str] | None = None, source: str | None = None):
        if locations is not None and len(locations) != len(rows):
            raise ValueError(f"got {len(rows)} rows but {len(locations)} locations; pass one location per row")
        self.locations = list(locations) if locations is not None else [f"row {i}" for i in range(len(rows))]
        self.rows = [dict(zip(("query", "positive", "negatives"), validate_row(row, i, where)))
                     for i, (row, where) in enumerate(zip(rows, self.locations))]
        if not self.rows:
            raise ValueError(f"{source or 'the training data'} holds no rows; give at least one {ROW_FORMAT}")
        check_negative_counts([len(row["negatives"]) for row in self.rows], self.locations)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, limit: int | None = None, what: str = "training data"
                   ) -> TripletDataset:
        """Rows of a JSONL file, one JSON object a line (blank lines skipped); ``limit`` keeps the first N
        (at least 1); ``what`` names the data in errors (``"evaluation data"`` for an eval file).
        Read as bytes and decoded line by line so that a non-UTF-8 byte is reported at its line."""
        if not Path(path).is_file():
            where = "" if Path(path).is_absolute() else f" (looked at {Path(path).absolute()}, relative to the " \
                f"current folder {Path.cwd()})"
            raise FileNotFoundError(
                f"{what} {path} {'is a folder' if Path(path).is_dir() else 'does not exist'}{where}; "
                f"pass a JSONL file with one {ROW_FORMAT} a line"
            )
        check_limit(limit)
        rows, locations = [], []
        offset = 0  # bytes before the current line, for the position of an undecodable byte
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if limit is not None and len(rows) >= limit:
                    break
                line = _decode_line(raw, path, number, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}:{number} holds a JSON {_json_type(row)}, not an object; "
                        f"write each line as {ROW_FORMAT}"
                    )
                rows.append(row)
                locations.append(f"{path}:{number}")
        return cls(rows, locations, source=str(path))

    @classmethod
    def from_any(cls, data, limit: int | None = None, what: str = "training data") -> TripletDataset:
        """A JSONL path, a list of dicts, a ``datasets.Dataset``, a pandas ``DataFrame`` (one row per
        record) or a TripletDataset; ``limit`` keeps the first N rows (at least 1, for every kind);
        ``what`` names the data in errors (``"evaluation data"`` for an eval set)."""
        check_limit(limit)
        if isinstance(data, TripletDataset):
            if limit is None or limit >= len(data):
                return data
            return cls(data.rows[:limit], data.locations[:limit], source=what)
        if isinstance(data, (str, Path)):
            return cls.from_jsonl(data, limit, what)
        if isinstance(data, Mapping):
            hint = f"; pick one split, e.g. data[{next(iter(data))!r}]" if data else ""
            raise TypeError(f"{what} is a mapping ({type(data).__name__}), not a sequence of rows{hint}")
        if hasattr(data, "iloc") and hasattr(data, "to_dict"):  # a pandas DataFrame: data[i] is a column
            return cls(data.iloc[:limit].to_dict("records"), source=what)
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                f"{what} must be a JSONL path, a list of dicts, a datasets.Dataset, a pandas DataFrame or a "
                f"TripletDataset; got {type(data).__name__}"
            )
        rows = [data[i] for i in range(len(data) if limit is None else min(limit, len(data)))]
        return cls(rows, source=what)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def _decode_line(raw: bytes, path, number: int, offset: int) -> str:
    """One line as text; a UTF-8 byte-order mark on the first line is dropped (editors on Windows
    write one). A non-UTF-8 byte is named with its line, column and file offset, since a bare
    ``UnicodeDecodeError`` says neither where nor what to do."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        skipped = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
        start = err.start + skipped
        raise ValueError(
            f"{path}:{number}: byte 0x{raw[start]:02x} at column {start + 1} (file byte offset {offset + start}) "
            f"is not UTF-8 ({err.reason}); re-encode the file as UTF-8, e.g. from Latin-1: "
            f"iconv -f latin1 -t utf-8 {path} > fixed.jsonl"
        ) from err


def _json_type(value) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_prompt_names(prompts: Mapping[str, str], query_prompt_name: str | None,
                       document_prompt_name: str | None) -> None:
    """Refuse a query / document prompt name that is not in ``prompts``, naming the option (the same
    name on the ``llm-embed-train`` command line) and the way to ask for no prompt."""
    for option, name in (("query_prompt_name", query_prompt_name), ("document_prompt_name", document_prompt_name)):
        if name is not None and name not in prompts:
            raise ValueError(f"{option} {name!r} (--{option} of llm-embed-train) is not one of the model's prompts "
                             f"{sorted(prompts)}; name one of them, or none (None in Python) for no prompt")


class ContrastiveDataCollator:
    """Turns rows into ``query_input_ids / query_attention_mask`` (B queries) and
    ``document_input_ids / document_attention_mask`` (B positives, then K hard negatives per query,
    query-major). Every row of a batch must have the same number of hard negatives.

    Args:
        tokenizer: the model's tokenizer (``model.tokenizer``) or its backbone's.
        config: the model's :class:`LLMEmbeddingConfig` (prompts, max_seq_length, EOS, padding side).
        query_prompt_name / document_prompt_name: keys of ``config.prompts`` (None: no prefix).

    The collator reads ``config`` at every batch, as ``encode`` does: a change made after it was built
    (``model.config.max_seq_length = 256``, ``append_eos``, ``padding_side``, a prompt) reaches the
    training batches too. Its tokenizer is a copy configured for the config
    (:func:`~llm_embed.tokenizer_setup.configure_tokenizer`), configured again when those values change,
    so that a tokenizer that appends EOS itself stops doing so when ``append_eos`` is switched off.
    """

    def __init__(self, tokenizer, config, query_prompt_name: str | None = "query",
                 document_prompt_name: str | None = "document"):
        self.config = config
        self.query_prompt_name = query_prompt_name
        self.document_prompt_name = document_prompt_name
        self._given_tokenizer = tokenizer
        self._configure()
        self._prefixes()  # an unknown or too long prompt fails here, not at the first batch

    def _configure(self) -> None:
        self._settings = tokenizer_settings(self.config)
        self._tokenizer = configure_tokenizer(self._given_tokenizer, self.config)
        self.pad_id = resolve_pad_id(self._tokenizer)

    @property
    def tokenizer(self):
        """The tokenizer the batches are made with: the given one configured for the current config."""
        if tokenizer_settings(self.config) != self._settings:
            self._configure()
        return self._tokenizer

    def _prefixes(self) -> tuple[str, str]:
        """The query and document prefixes for the current config, each checked to leave room for text."""
        config, prompts = self.config, self.config.prompts
        check_prompt_names(prompts, self.query_prompt_name, self.document_prompt_name)
        prefixes = (resolve_prompt(prompts, None, self.query_prompt_name, None),
                    resolve_prompt(prompts, None, self.document_prompt_name, None))
        for prefix in prefixes:
            check_prompt_fits(self.tokenizer, prefix, config.max_seq_length, config.append_eos)
        return prefixes

    def _tokenize(self, texts: list[str], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.tokenizer  # configured again first if the config changed
        ids = tokenize_texts(tokenizer, [prefix + t for t in texts], self.config.max_seq_length,
                             self.config.append_eos)
        return pad_batch(ids, self.pad_id, self.config.padding_side)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        triples = [validate_row(row, i) for i, row in enumerate(rows)]
        counts = {len(negatives) for _, _, negatives in triples}
        if len(counts) > 1:
            raise ValueError(
                f"rows of one batch have different numbers of hard negatives {sorted(counts)}; give every row "
                "the same number of hard negatives (or none)"
            )
        queries = [query for query, _, _ in triples]
        documents = [positive for _, positive, _ in triples]
        documents += [negative for _, _, negatives in triples for negative in negatives]
        query_prefix, document_prefix = self._prefixes()
        query_ids, query_mask = self._tokenize(queries, query_prefix)
        document_ids, document_mask = self._tokenize(documents, document_prefix)
        return {
            "query_input_ids": query_ids,
            "query_attention_mask": query_mask,
            "document_input_ids": document_ids,
            "document_attention_mask": document_mask,
        }


__all__ = [
    "QUERY_FIELDS",
    "ROW_FORMAT",
    "ContrastiveDataCollator",
    "TripletDataset",
    "check_limit",
    "check_negative_counts",
    "validate_row",
]
