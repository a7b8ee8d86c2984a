"""Packing: run texts without padding waste, then hand the pooling heads the usual padded layout.

``encode`` packs a whole call at once (:func:`plan_packed_batches`): every text goes first-fit
decreasing into rows of one fixed length ``L`` (the call's longest text), so the gaps that long texts
leave in their rows are filled with short texts from anywhere in the call, and forward batches are
formed by a token budget (``batch_size`` rows of ``L``) rather than a text count. Within a row the
texts lie end to end, each with position ids restarting at 0 and an attention mask that keeps every
text to itself (block diagonal; causal inside a block in causal mode). After the backbone, a batch's
token states are gathered back into a right-padded ``(B, T, H)`` tensor (:meth:`PackedBatch.unpack`)
so that every pooling head, and the per-layer reductions of multi-layer pooling, run unchanged;
``PADDED_FACTOR`` bounds that tensor's size.

How the mask reaches the attention kernel depends on the backbone's ``attn_implementation``:

- ``flash_attention_*``: one row holding every token, no mask, position ids restarting per text;
  transformers' flash integration turns them into ``cu_seqlens`` (variable-length kernel). The
  module ``is_causal`` flag (switched by ``make_bidirectional``) picks the mode.
- ``flex_attention``: a ``BlockMask`` built here (document mask, causal or not) and passed as the
  attention mask; ``masking_utils`` returns a prepared mask as is. It is built here, not detected
  from the position ids, because transformers' bidirectional mask (``create_bidirectional_mask``)
  ignores packed position ids and would let packed texts see each other.
- ``sdpa`` on CUDA: ``encode`` switches the backbone to ``packed_attention.SDPA_WITH_FLEX`` (SDPA for
  every tensor mask, flex attention for a ``BlockMask``) and packs as under ``flex_attention``; the
  padded and training paths keep SDPA.
- ``sdpa`` elsewhere / ``eager``: a dense ``(rows, 1, R, R)`` mask. Correct, but a dense mask makes SDPA
  leave its flash kernel, so ``encode`` packs for these only when asked (``packing=True``). Two
  modes, because the kernels read a mask differently: ``dense`` (SDPA) passes a boolean mask (True:
  attend); ``dense_additive`` (eager, which adds the mask to the attention scores) passes a float
  mask in the model's dtype, 0 where a token may attend and the dtype's minimum elsewhere. Both give
  a :class:`PackedBatch` whose ``mode`` is ``dense``: only the mask's form differs.

:data:`PACKING_MODES` lists the four modes; :func:`resolve_packing` picks one for a backbone.

Backbones whose attention is windowed (``sliding_window``, ``attention_chunk_size``) smaller than a
packed text are not packed: one prepared mask would apply to every layer type. Nor are ALiBi backbones
(their biases come from the 2-D padding mask).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .packed_attention import SDPA_WITH_FLEX, enable_packed_flex

PACKING_MODES = ("flash", "flex", "dense", "dense_additive")
"""How a packed batch is masked (see the module docstring): ``flash`` (one row, position ids only),
``flex`` (a ``BlockMask``), ``dense`` (a boolean 4D mask, for SDPA), ``dense_additive`` (a 4D float
mask of 0 / dtype minimum, for eager attention, which adds the mask to its scores)."""


def host_to_device(block: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host array on ``device`` in one copy. On CUDA the copy is asynchronous from page-locked
    memory (PyTorch's caching host allocator reuses the pinned blocks, so no ``cudaHostAlloc`` per
    batch once warm), so the next batch is prepared while the GPU works; a pageable copy would
    make the host wait for the GPU's queue. Lives here, not in ``encoding`` (which imports this
    module), because both the padded and the packed paths use it."""
    tensor = torch.from_numpy(block)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def packing_mode(attn_implementation: str | None) -> str:
    """How packed rows are masked for this attention implementation (see the module docstring):
    ``flash``, ``flex`` or ``dense``. :func:`resolve_packing` refines ``dense`` to ``dense_additive``
    for eager attention."""
    implementation = attn_implementation or "eager"
    if implementation.startswith("flash_attention") or "flash-attn" in implementation:
        return "flash"
    if implementation in ("flex_attention", SDPA_WITH_FLEX):
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


def uses_alibi(backbone_config) -> bool:
    """Whether the backbone biases attention by ALiBi (falcon with ``alibi``, mpt, bloom): those biases
    are computed from the 2-D padding mask, which a packed batch replaces by a prepared one."""
    attn_config = getattr(backbone_config, "attn_config", None)
    return bool(getattr(backbone_config, "alibi", False)) or backbone_config.model_type == "bloom" or \
        bool(getattr(attn_config, "alibi", False))


def check_packable(backbone_config, longest: int) -> str | None:
    """None when packing is exact for texts up to ``longest`` tokens, else the reason it is not."""
    if uses_alibi(backbone_config):
        return "the backbone's ALiBi position biases are computed from a (batch, length) padding mask, which a " \
               "packed batch does not have"
    window = attention_window(backbone_config)
    if window is not None and window < longest:
        return (
            f"the backbone attends within a window of {window} tokens, shorter than the longest text ({longest}); "
            "a packed batch's prepared mask would drop the window"
        )
    return None


def first_fit_decreasing(lengths: list[int], row_length: int, max_padded: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``row_length`` tokens (longest first: each
    text goes into the first row with room, else opens a new one). ``max_padded`` also bounds a row's
    texts by their padded size: count x the row's first (longest) text <= ``max_padded`` (see
    :func:`plan_packed_batches`). Rows come out in the order they were opened (by their longest text,
    descending). The first row with room is found with a numpy scan over the open rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free = np.empty(len(lengths), dtype=np.int64)  # free tokens per row; -1 once a row is closed
    rows: list[list[int]] = []
    longest: list[int] = []
    first_open = 0  # rows before this one are closed (or full for every text left)
    smallest = min(lengths, default=0)
    for index in order:
        length = lengths[index]
        if length > row_length:
            raise ValueError(f"text {index} has {length} tokens, more than the packed row length {row_length}")
        candidates = free[first_open : len(rows)] >= length
        hit = int(candidates.argmax()) if candidates.size else 0
        if candidates.size and candidates[hit]:
            r = first_open + hit
            rows[r].append(index)
            free[r] -= length
        else:
            r = len(rows)
            rows.append([index])
            longest.append(length)
            free[r] = row_length - length
        if free[r] < smallest or (max_padded is not None and (len(rows[r]) + 1) * longest[r] > max_padded):
            free[r] = -1  # no text left can join this row
        while first_open < len(rows) and free[first_open] < 0:
            first_open += 1
    return rows


PADDED_FACTOR = 4
"""Bound on a packed forward batch's unpacked size: its texts x its longest text (the ``(B, T, H)``
layout the pooling heads see, see :meth:`PackedBatch.unpack`) stays within ``PADDED_FACTOR`` x its
token budget. Without it, a batch whose rows hold a long text and, filling the other rows, thousands
of short ones would unpack to thousands x the long text's length."""


@dataclass
class BatchPlan:
    """One forward batch of call-level packing: ``texts`` (indices into the call's texts, in the order
    of the batch's embeddings), ``row_texts`` (positions in ``texts``, per packed row) and
    ``row_length`` (None in flash mode: one row of every token)."""

    texts: list[int]
    row_texts: list[list[int]]
    row_length: int | None


FLEX_ROW_MULTIPLE = 128
"""Row length granularity of flex packing: flex attention's default block size (see
:func:`plan_packed_batches`)."""


def plan_packed_batches(lengths: list[int], batch_size: int, mode: str) -> list[BatchPlan]:
    """Pack a whole ``encode`` call: rows of a fixed length ``L`` (the call's longest text) filled
    first-fit decreasing with texts from the entire call, grouped into forward batches by a token
    budget of ``batch_size x L`` (the worst case of a padded batch of ``batch_size`` texts): at most
    ``batch_size`` rows per batch. ``flash`` mode (one row per batch, no padding at all) takes the
    length-sorted texts in turn up to that budget. A text never spans two rows or batches. Under
    ``flex``, ``L`` is rounded up to a multiple of ``FLEX_ROW_MULTIPLE`` (flex attention's block size):
    the rows hold more short texts instead of padding, and every piece of a call of short texts
    has the same row length, so flex attention compiles for few shapes.

    Every batch also keeps its unpacked layout (texts x its longest text) within
    ``PADDED_FACTOR x batch_size x L`` slots: a row holds at most ``PADDED_FACTOR x L`` padded slots
    (count x its first, longest text), so a batch of one row always fits, and a batch closes early
    when its next row would break the bound. The last batch may be smaller."""
    if not lengths or min(lengths) < 1:
        raise ValueError("plan_packed_batches needs at least one text, each with at least one token")
    row_length = max(lengths)
    if mode == "flex":  # whole flex blocks: fewer shapes to compile, and short texts fill bigger batches
        row_length = -(-row_length // FLEX_ROW_MULTIPLE) * FLEX_ROW_MULTIPLE
    budget = batch_size * row_length
    max_padded = PADDED_FACTOR * budget
    if mode == "flash":
        groups: list[list[int]] = []
        tokens = 0
        for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            group = groups[-1] if groups else None
            if group and tokens + lengths[index] <= budget and (len(group) + 1) * lengths[group[0]] <= max_padded:
                group.append(index)
                tokens += lengths[index]
            else:
                groups.append([index])
                tokens = lengths[index]
        return [BatchPlan(group, [list(range(len(group)))], None) for group in groups]
    rows = first_fit_decreasing(lengths, row_length, max_padded=PADDED_FACTOR * row_length)
    batches: list[list[list[int]]] = []
    count = 0
    for row in rows:  # rows in the order they were opened: each row's first text is its longest
        batch = batches[-1] if batches else None
        if batch and len(batch) < batch_size and (count + len(row)) * lengths[batch[0][0]] <= max_padded:
            batch.append(row)
            count += len(row)
        else:
            batches.append([row])
            count = len(row)
    plans = []
    for batch in batches:
        texts = [index for row in batch for index in row]
        starts = itertools.accumulate((len(row) for row in batch), initial=0)
        plans.append(BatchPlan(texts, [list(range(s, s + len(row))) for s, row in zip(starts, batch)], row_length))
    return plans


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
    row_texts: list[list[int]] | None = None,
    row_length: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PackedBatch:
    """Pack token-id lists (one per text) for the backbone. ``mode`` (one of :data:`PACKING_MODES`):
    ``flash`` (one row, no mask), ``flex`` (BlockMask), ``dense`` (boolean 4D mask, for SDPA) or
    ``dense_additive`` (4D float mask in ``dtype``, 0 / dtype minimum, for eager). ``row_texts`` /
    ``row_length``: the layout (positions in ``rows`` per packed row, and the row length), as
    :func:`plan_packed_batches` gives it for ``encode``; by default the texts go first-fit decreasing
    into rows as long as the longest of them (flash: one row of every token). The host arrays reach
    the device in one copy (asynchronous on CUDA)."""
    if mode not in PACKING_MODES:
        raise ValueError(f"packing mode must be one of {PACKING_MODES}, got {mode!r}")
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("pack_batch needs at least one text, each with at least one token")
    lengths = [len(row) for row in rows]
    longest = max(lengths)
    if mode == "flash":
        row_texts = row_texts or [list(range(len(rows)))]
        if len(row_texts) != 1:
            raise ValueError("flash packing puts a batch's texts into one row")
        row_length = sum(lengths)
    else:
        row_length = row_length or longest
        row_texts = row_texts or first_fit_decreasing(lengths, row_length)
    placed = sorted(index for texts in row_texts for index in texts)
    if placed != list(range(len(rows))) or any(sum(lengths[i] for i in texts) > row_length for texts in row_texts):
        raise ValueError("row_texts must place every text exactly once, within row_length tokens per row")
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


def call_packing_mode(model, packing: bool | None) -> str | None:
    """The packing mode an ``encode`` call would use before its texts are tokenized (None: padded).
    ``packing=None`` packs where the attention kernel takes it without a dense mask (flash, flex, and
    SDPA on CUDA through :func:`~llm_embed.packed_attention.enable_packed_flex` where the backbone
    supports flex); ``True`` always packs (dense mask with SDPA / eager elsewhere); ``False`` never
    packs. ``encode`` reads it to pick its piece sizes; :func:`resolve_packing` then checks each piece's
    lengths."""
    if packing is not None and not isinstance(packing, bool):
        raise TypeError(f"encode(): packing must be True, False or None, got {packing!r}")
    if packing is False:
        return None
    if packing is None and model.device.type == "cuda":
        enable_packed_flex(model.backbone)  # the fastest exact path by default, where the backbone supports it
    implementation = getattr(model.backbone.config, "_attn_implementation", None)
    if packing is None and not packs_by_default(implementation):
        return None
    mode = packing_mode(implementation)
    if mode == "dense" and (implementation or "eager") != "sdpa":
        mode = "dense_additive"  # eager adds the mask to the scores
    return mode


def resolve_packing(model, packing: bool | None, longest: int) -> str | None:
    """The packing mode ``encode`` uses for texts whose longest has ``longest`` tokens (None: pad as
    usual): :func:`call_packing_mode`, unless packing these lengths would not be exact (a sliding
    window shorter than the longest text): then padded for ``packing=None``, an error for ``True``."""
    mode = call_packing_mode(model, packing)
    if mode is None:
        return None
    reason = check_packable(model.backbone.config, longest)
    if reason is not None:
        if packing:
            raise ValueError(f"encode(packing=True): cannot pack this batch exactly: {reason}; use packing=None/False")
        return None
    return mode


__all__ = [
    "FLEX_ROW_MULTIPLE",
    "PACKING_MODES",
    "PADDED_FACTOR",
    "BatchPlan",
    "PackedBatch",
    "attention_window",
    "call_packing_mode",
    "check_packable",
    "first_fit_decreasing",
    "flex_document_mask",
    "host_to_device",
    "pack_batch",
    "packing_mode",
    "packs_by_default",
    "plan_packed_batches",
    "resolve_packing",
    "uses_alibi",
]
