"""Packing: run a batch of texts without padding waste, then hand the pooling heads the usual padded layout.

``encode`` sorts texts by length, so a batch already carries little padding. Packing removes the
rest: the batch's texts are laid end to end in rows (first-fit decreasing into rows as long as the
batch's longest text), each text with position ids restarting at 0 and an attention mask that keeps
every text to itself (block diagonal; causal inside a block in causal mode). After the backbone, the
token states are gathered back into a right-padded ``(B, T, H)`` tensor (:meth:`PackedBatch.unpack`)
so that every pooling head, and the per-layer reductions of multi-layer pooling, run unchanged.

How the mask reaches the attention kernel depends on the backbone's ``attn_implementation``:

- ``flash_attention_*``: one row holding every token, no mask, position ids restarting per text;
  transformers' flash integration turns them into ``cu_seqlens`` (variable-length kernel). The
  module ``is_causal`` flag (switched by ``make_bidirectional``) picks the mode.
- ``flex_attention``: a ``BlockMask`` built here (document mask, causal or not) and passed as the
  attention mask; ``masking_utils`` returns a prepared mask as is. It is built here, not detected
  from the position ids, because transformers' bidirectional mask (``create_bidirectional_mask``)
  ignores packed position ids and would let packed texts see each other.
- ``sdpa`` / ``eager``: a dense ``(rows, 1, R, R)`` mask. Correct, but a dense mask makes SDPA
  leave its flash kernel, so ``encode`` packs for these only when asked (``packing=True``).

Backbones whose attention is windowed (``sliding_window``, ``attention_chunk_size``) smaller than a
packed text are not packed: one prepared mask would apply to every layer type.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PACKING_MODES = ("flash", "flex", "dense")


def packing_mode(attn_implementation: str | None) -> str:
    """How packed rows are masked for this attention implementation (see the module docstring)."""
    implementation = attn_implementation or "eager"
    if implementation.startswith("flash_attention") or "flash-attn" in implementation:
        return "flash"
    if implementation == "flex_attention":
        return "flex"
    return "dense"


def packs_by_default(attn_implementation: str | None) -> bool:
    """Packing is on by default only where it needs no dense mask (variable-length / block-sparse kernels)."""
    return packing_mode(attn_implementation) in ("flash", "flex")


def attention_window(backbone_config) -> int | None:
    """The smallest attention window of the backbone (sliding window or chunked attention), if any."""
    windows = [getattr(backbone_config, name, None) for name in ("sliding_window", "attention_chunk_size")]
    windows = [w for w in windows if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    layer_types = getattr(backbone_config, "layer_types", None) or []
    if windows and layer_types and not any("sliding" in str(t) or "chunk" in str(t) for t in layer_types):
        return None  # a window is configured but no layer uses it
    if getattr(backbone_config, "use_sliding_window", True) is False:
        return None  # qwen2-style switch
    return min(windows) if windows else None


def check_packable(backbone_config, longest: int) -> str | None:
    """None when packing is exact for texts up to ``longest`` tokens, else the reason it is not."""
    window = attention_window(backbone_config)
    if window is not None and window < longest:
        return (
            f"the backbone attends within a window of {window} tokens, shorter than the longest text ({longest}); "
            "a packed batch's prepared mask would drop the window"
        )
    return None


def first_fit_decreasing(lengths: list[int], row_length: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``row_length`` tokens (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        length = lengths[index]
        if length > row_length:
            raise ValueError(f"text {index} has {length} tokens, more than the packed row length {row_length}")
        for r, space in enumerate(free):
            if space >= length:
                rows[r].append(index)
                free[r] -= length
                break
        else:
            rows.append([index])
            free.append(row_length - length)
    return rows


@dataclass
class PackedBatch:
    """A packed batch: backbone inputs (``input_ids``, ``position_ids``, ``attention_mask``: a BlockMask,
    a 4D mask or None) plus what maps the packed token states back to the padded layout."""

    input_ids: torch.Tensor  # (rows, R)
    position_ids: torch.Tensor  # (rows, R)
    attention_mask: Any  # BlockMask | (rows, 1, R, R) tensor | None
    gather_index: torch.Tensor  # (B, T): flat packed position of each padded slot (0 for padding)
    padded_mask: torch.Tensor  # (B, T): right-padded attention mask of the unpacked layout
    mode: str

    @property
    def num_texts(self) -> int:
        return self.padded_mask.shape[0]

    def unpack(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, R, H) packed states -> (B, T, H) right-padded states (padding slots hold arbitrary finite values)."""
        flat = states.reshape(-1, states.shape[-1])
        return flat[self.gather_index.to(flat.device)]


def _packed_layout(lengths: list[int], row_texts: list[list[int]], row_length: int, pad_id: int,
                   tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host arrays of a packed batch, built with numpy (no per-text tensor work): a ``(3, rows, R)``
    block (input ids, position ids, document ids) and a ``(2, B, T)`` block (gather index, padded
    mask). ``tokens``: every text's ids concatenated in text order. Position ids restart at 0 per
    text; the padding at a row's end counts as one more text (positions from 0, document id
    ``B + row``), so its queries always attend somewhere (finite)."""
    num_texts, num_rows = len(lengths), len(row_texts)
    sizes = np.asarray(lengths, dtype=np.int64)
    base = np.empty(num_texts, dtype=np.int64)  # flat packed offset of each text's first token
    used = np.empty(num_rows, dtype=np.int64)
    for r, texts in enumerate(row_texts):
        offset = r * row_length
        for index in texts:
            base[index] = offset
            offset += lengths[index]
        used[r] = offset - r * row_length
    starts = np.cumsum(sizes) - sizes  # offset of each text in ``tokens``
    within = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)  # 0.. per text
    destination = np.repeat(base, sizes) + within
    slots = np.arange(row_length, dtype=np.int64)
    rows = np.empty((3, num_rows, row_length), dtype=np.int64)
    rows[0] = pad_id
    rows[1] = slots - used[:, None]  # trailing padding: positions from 0 (overwritten for texts)
    rows[2] = num_texts + np.arange(num_rows, dtype=np.int64)[:, None]
    flat = rows.reshape(3, -1)
    flat[0, destination] = tokens
    flat[1, destination] = within
    flat[2, destination] = np.repeat(np.arange(num_texts, dtype=np.int64), sizes)
    longest = int(sizes.max())
    padded = np.empty((2, num_texts, longest), dtype=np.int64)
    columns = np.arange(longest, dtype=np.int64)
    mask = columns < sizes[:, None]
    padded[0] = np.where(mask, base[:, None] + columns, 0)
    padded[1] = mask
    return rows, padded


def pack_batch(
    rows: list[list[int]],
    pad_id: int,
    *,
    mode: str,
    is_causal: bool,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PackedBatch:
    """Pack token-id lists (one per text) for the backbone. ``mode``: ``flash`` (one row, no mask),
    ``flex`` (BlockMask) or ``dense`` (4D mask: bool for SDPA, additive in ``dtype`` otherwise, see
    ``dense_additive``). The host arrays reach the device in one copy (asynchronous on CUDA)."""
    from .encoding import host_to_device

    if mode not in PACKING_MODES and mode != "dense_additive":
        raise ValueError(f"packing mode must be one of {PACKING_MODES}, got {mode!r}")
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("pack_batch needs at least one text, each with at least one token")
    lengths = [len(row) for row in rows]
    longest = max(lengths)
    if mode == "flash":
        row_texts = [list(range(len(rows)))]
        row_length = sum(lengths)
    else:
        row_length = longest
        row_texts = first_fit_decreasing(lengths, row_length)
    tokens = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=sum(lengths))
    packed_rows, padded = _packed_layout(lengths, row_texts, row_length, pad_id, tokens)
    num_rows = len(row_texts)
    device = torch.device(device)
    # one block, one copy: (3 x rows x R) packed arrays, then (2 x B x T) padded ones
    block = host_to_device(np.concatenate([packed_rows.reshape(-1), padded.reshape(-1)]), device)
    packed_part, padded_part = block.split([packed_rows.size, padded.size])
    input_ids, position_ids, documents = packed_part.view(3, num_rows, row_length).unbind(0)
    gather_index, padded_mask = padded_part.view(2, len(rows), longest).unbind(0)
    attention_mask = None
    if mode == "flex":
        attention_mask = flex_document_mask(documents, is_causal, device)
    elif mode != "flash":
        allowed = documents[:, :, None] == documents[:, None, :]
        if is_causal:
            allowed = allowed & torch.ones(row_length, row_length, dtype=torch.bool, device=device).tril()
        allowed = allowed[:, None]
        if mode == "dense_additive":
            attention_mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        else:
            attention_mask = allowed
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        gather_index=gather_index,
        padded_mask=padded_mask,
        mode="dense" if mode == "dense_additive" else mode,
    )


def flex_document_mask(documents: torch.Tensor, is_causal: bool, device: torch.device):
    """A flex-attention ``BlockMask`` keeping each packed text to itself (and causal inside it if asked)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document(batch, head, q_idx, kv_idx):
        keep = documents[batch, q_idx] == documents[batch, kv_idx]
        return keep & (kv_idx <= q_idx) if is_causal else keep

    rows, length = documents.shape
    return create_block_mask(same_document, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=device)


def resolve_packing(model, packing: bool | None, longest: int) -> str | None:
    """The packing mode ``encode`` uses for this call (None: pad as usual). ``packing=None`` packs where
    the attention kernel takes it without a dense mask; ``True`` always packs (dense mask with
    SDPA / eager) and raises where packing would not be exact; ``False`` never packs."""
    if packing is not None and not isinstance(packing, bool):
        raise TypeError(f"encode(): packing must be True, False or None, got {packing!r}")
    if packing is False:
        return None
    implementation = getattr(model.backbone.config, "_attn_implementation", None)
    if packing is None and not packs_by_default(implementation):
        return None
    reason = check_packable(model.backbone.config, longest)
    if reason is not None:
        if packing:
            raise ValueError(f"encode(packing=True): cannot pack this batch exactly: {reason}; use packing=None/False")
        return None
    mode = packing_mode(implementation)
    if mode == "dense" and (implementation or "eager") != "sdpa":
        mode = "dense_additive"  # eager adds the mask to the scores
    return mode
