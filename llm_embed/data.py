"""Contrastive training data: rows of (query, positive, hard negatives) -> tokenized model batches.

Rows are dicts with a query (``query`` or ``anchor``), a ``positive`` and hard negatives
(``negative``: one string, or ``negatives``: a list; none at all is fine). They come from a
list, a JSONL file or a ``datasets`` dataset; :class:`TripletDataset` wraps all three as a plain
torch dataset. The Trainer must be told to pass rows through untouched with
``TrainingArguments(remove_unused_columns=False)``: their fields are not ``forward`` arguments.
:class:`ContrastiveDataCollator` applies the query / document prompts and tokenizes exactly
as ``encode`` does, producing the batch for which the model's ``forward`` returns the loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .encoding import pad_batch, resolve_prompt, tokenize_texts

QUERY_FIELDS = ("query", "anchor")


def normalize_row(row, index: int) -> tuple[str, str, list[str]]:
    """(query, positive, negatives) of one row; a clear error for anything missing or empty."""
    if not isinstance(row, dict):
        raise TypeError(f"row {index}: expected a dict with query/anchor, positive, negative(s); got {type(row).__name__}")
    if not row:
        raise ValueError(
            f"row {index} arrived empty: the Trainer dropped its fields because they are not forward() "
            "arguments; pass TrainingArguments(remove_unused_columns=False)"
        )
    query_field = next((name for name in QUERY_FIELDS if name in row), None)
    missing = (["query (or anchor)"] if query_field is None else []) + ([] if "positive" in row else ["positive"])
    if missing:
        raise ValueError(f"row {index} is missing {', '.join(missing)}; it has fields {sorted(row)}")
    if "negative" in row and "negatives" in row:
        raise ValueError(f"row {index} has both 'negative' and 'negatives'; keep one")
    negatives = row.get("negatives", row.get("negative", []))
    if isinstance(negatives, str):
        negatives = [negatives]
    texts = {query_field: row[query_field], "positive": row["positive"]}
    texts.update({f"negative {i}": text for i, text in enumerate(negatives)})
    for name, text in texts.items():
        if not isinstance(text, str):
            raise TypeError(f"row {index}: {name} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"row {index}: {name} is empty; remove the row or fill it in")
    return row[query_field], row["positive"], list(negatives)


class TripletDataset(Dataset):
    """Rows of contrastive training data, validated up front (a bad row fails before training starts)."""

    def __init__(self, rows: Sequence[dict]):
        self.rows = [dict(zip(("query", "positive", "negatives"), normalize_row(row, i))) for i, row in enumerate(rows)]
        if not self.rows:
            raise ValueError("the training data holds no rows")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, limit: int | None = None) -> TripletDataset:
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
                if limit is not None and len(rows) >= limit:
                    break
        return cls(rows)

    @classmethod
    def from_any(cls, data, limit: int | None = None) -> TripletDataset:
        """A JSONL path, a list of dicts, a ``datasets.Dataset`` or a TripletDataset."""
        if isinstance(data, TripletDataset):
            return data
        if isinstance(data, (str, Path)):
            return cls.from_jsonl(data, limit)
        rows = [data[i] for i in range(len(data) if limit is None else min(limit, len(data)))]
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


class ContrastiveDataCollator:
    """Turns rows into ``query_input_ids / query_attention_mask`` (B queries) and
    ``document_input_ids / document_attention_mask`` (B positives, then K hard negatives per query,
    query-major). Every row of a batch must have the same number of hard negatives.

    Args:
        tokenizer: the model's tokenizer (``model.tokenizer``).
        config: the model's :class:`LLMEmbeddingConfig` (prompts, max_seq_length, EOS, padding side).
        query_prompt_name / document_prompt_name: keys of ``config.prompts`` (None: no prefix).
    """

    def __init__(self, tokenizer, config, query_prompt_name: str | None = "query",
                 document_prompt_name: str | None = "document"):
        self.tokenizer = tokenizer
        self.config = config
        self.query_prefix = resolve_prompt(config.prompts, None, query_prompt_name, None)
        self.document_prefix = resolve_prompt(config.prompts, None, document_prompt_name, None)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
        self.pad_id = pad_id

    def _tokenize(self, texts: list[str], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenize_texts(self.tokenizer, [prefix + t for t in texts], self.config.max_seq_length, self.config.append_eos)
        return pad_batch(ids, self.pad_id, self.config.padding_side)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        triples = [normalize_row(row, i) for i, row in enumerate(rows)]
        counts = {len(negatives) for _, _, negatives in triples}
        if len(counts) > 1:
            raise ValueError(
                f"rows of one batch have different numbers of hard negatives {sorted(counts)}; give every row the same"
            )
        queries = [query for query, _, _ in triples]
        documents = [positive for _, positive, _ in triples]
        documents += [negative for _, _, negatives in triples for negative in negatives]
        query_ids, query_mask = self._tokenize(queries, self.query_prefix)
        document_ids, document_mask = self._tokenize(documents, self.document_prefix)
        return {
            "query_input_ids": query_ids,
            "query_attention_mask": query_mask,
            "document_input_ids": document_ids,
            "document_attention_mask": document_mask,
        }
