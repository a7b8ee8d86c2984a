"""Contrastive training objective: InfoNCE with in-batch and hard negatives, gathered across ranks,
and GradCache (cached contrastive loss) to decouple the contrastive batch from memory.

Shipped with checkpoints (the model's ``forward`` returns this loss), so it imports only torch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) outside distributed training."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, keeping the gradient path to each rank's part
    (its backward sums the gradients from all ranks, a reduce-scatter)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def check_equal_batch_sizes(batch_size: int, device: torch.device) -> None:
    """Gathering needs the same number of queries on every rank (e.g. a short last batch breaks it)."""
    world, _ = distributed_world()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([batch_size], device=device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"contrastive loss across ranks needs equal per-rank batches, got {sizes}; "
            "set TrainingArguments(dataloader_drop_last=True)"
        )


_KEY_SEED = 0x5EED  # every rank draws the same hash coefficients


def text_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Two int64 hashes per row, ``(N, 2)``: equal for rows holding the same tokens (the same text, prompt
    and truncation) however they are padded, and equal for different rows only by a chance of about
    2**-62 per pair. Each is a sum of (token id + 1) times a random coefficient below 2**31 drawn for its
    position among the row's real tokens, plus the row's length: with ids below 2**18 and rows of at most
    8,192 tokens no sum overflows. The coefficients come from a fixed seed, so every rank agrees."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.long()
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    coefficients = _key_coefficients(input_ids.shape[1] + 1).to(input_ids.device)  # the last: the length's
    tokens = (input_ids.long() + 1) * mask  # (N, T)
    keys = (tokens.unsqueeze(-1) * coefficients[positions]).sum(dim=1)
    return keys + mask.sum(dim=-1, keepdim=True) * coefficients[-1]


_KEY_BLOCK = 1024


def _key_coefficients(count: int) -> torch.Tensor:
    """``count`` rows of two coefficients for positions 0..count-2 and one for the length (the last), each
    position's the same whatever ``count`` (blocks of positions drawn from their own seeds)."""
    blocks = [torch.randint(1, 1 << 31, (_KEY_BLOCK, 2), generator=torch.Generator().manual_seed(_KEY_SEED + block))
              for block in range(-(-(count - 1) // _KEY_BLOCK))]
    length = torch.randint(1, 1 << 31, (1, 2), generator=torch.Generator().manual_seed(_KEY_SEED - 1))
    positions = torch.cat(blocks)[: count - 1] if blocks else torch.empty(0, 2, dtype=torch.long)
    return torch.cat([positions, length])


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """Every rank's ``keys`` concatenated (no gradient: they are integers)."""
    world, _ = distributed_world()
    parts = [torch.empty_like(keys) for _ in range(world)]
    torch.distributed.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def same_text(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(len(first), len(second))`` bool: row i of ``first`` and row j of ``second`` hold the same text."""
    return (first[:, None, :] == second[None, :, :]).all(dim=-1)


class InfoNCELoss(nn.Module):
    """InfoNCE over cosine similarities: each query against its positive, every other query's
    positive (in-batch negatives) and all hard negatives, at ``temperature`` (paper: 0.05, i.e.
    scale 20). Under distributed training every rank's positives and negatives are candidates
    for every query (gathered with gradient). ``symmetric`` adds the positive -> queries term.

    ``documents`` holds the B positives first, then the hard negatives (K per query, query-major).
    The loss is the mean over this rank's queries; averaging gradients over ranks (DDP) then gives
    the gradient of the mean over all queries.

    ``mask_duplicates``: with :func:`text_keys` of the queries and documents, a candidate that is not a
    negative for the query is left out instead of pushed away: a document holding the text of the
    query's own positive (a positive repeated in another row, or used there as a hard negative), and the
    positive of another row whose query has the same text (the same question with another answer).
    Without it such a query's loss cannot go below log 2.
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, gather_across_ranks: bool = True,
                 mask_duplicates: bool = False):
        super().__init__()
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0
                or not math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        self.temperature = float(temperature)
        self.symmetric = symmetric
        self.gather_across_ranks = gather_across_ranks
        self.mask_duplicates = mask_duplicates

    def forward(self, queries: torch.Tensor, documents: torch.Tensor, query_keys: torch.Tensor | None = None,
                document_keys: torch.Tensor | None = None) -> torch.Tensor:
        batch = queries.shape[0]
        if batch == 0 or documents.shape[0] % batch:
            raise ValueError(
                f"documents must hold the {batch} positives then the same number of hard negatives per query; "
                f"got {documents.shape[0]} documents for {batch} queries"
            )
        if self.mask_duplicates and (query_keys is None or document_keys is None):
            raise ValueError("mask_duplicates needs the texts' keys: pass query_keys and document_keys (text_keys "
                             "of the tokenized queries and documents)")
        queries = F.normalize(queries.float(), dim=-1)
        documents = F.normalize(documents.float(), dim=-1)
        positives, negatives = documents[:batch], documents[batch:]
        world, rank = distributed_world() if self.gather_across_ranks else (1, 0)
        all_queries = queries
        if world > 1:
            check_equal_batch_sizes(batch, queries.device)
            all_queries = all_gather_with_grad(queries)
            positives_all = all_gather_with_grad(positives)
            negatives = all_gather_with_grad(negatives)
        else:
            positives_all = positives
        candidates = torch.cat([positives_all, negatives])
        if candidates.shape[0] < 2:
            raise ValueError(
                "the contrastive loss needs at least two candidates per query: a batch of one query with no hard "
                "negative has nothing to contrast with; use a larger batch or add negatives"
            )
        labels = torch.arange(batch, device=queries.device) + rank * batch
        logits = queries @ candidates.T / self.temperature
        masks = self._duplicate_masks(query_keys, document_keys, batch, world, labels) if self.mask_duplicates \
            else None
        if masks is not None:
            logits = logits.masked_fill(masks[0], float("-inf"))
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            reverse = positives @ all_queries.T / self.temperature
            if masks is not None:
                reverse = reverse.masked_fill(masks[1], float("-inf"))
            loss = (loss + F.cross_entropy(reverse, labels)) / 2
        return loss

    @staticmethod
    def _duplicate_masks(query_keys, document_keys, batch, world, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates to leave out: for this rank's queries among all candidates (positives of every
        rank, then their negatives), and, for the symmetric term, for its positives among all queries."""
        positive_keys, negative_keys = document_keys[:batch], document_keys[batch:]
        if world > 1:
            all_query_keys, all_positive_keys = gather_keys(query_keys), gather_keys(positive_keys)
            negative_keys = gather_keys(negative_keys)
        else:
            all_query_keys, all_positive_keys = query_keys, positive_keys
        candidate_keys = torch.cat([all_positive_keys, negative_keys])
        own = torch.zeros(batch, candidate_keys.shape[0], dtype=torch.bool, device=labels.device)
        own[torch.arange(batch, device=labels.device), labels] = True
        same_question = same_text(query_keys, all_query_keys)  # (B, world*B): another row asks the same
        forward = same_text(positive_keys, candidate_keys)
        forward[:, : all_positive_keys.shape[0]] |= same_question
        reverse = same_question | same_text(positive_keys, all_positive_keys)
        return forward & ~own, reverse & ~own[:, : all_positive_keys.shape[0]]


def find_ddp_wrapper(module: nn.Module):
    """The ``DistributedDataParallel`` object that wraps ``module`` (the Trainer and accelerate
    create it out of sight), or None."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    for candidate in gc.get_objects():  # once per model: the caller caches the answer
        if isinstance(candidate, DistributedDataParallel) and candidate.module is module:
            return candidate
    return None


def find_fully_sharded_root(module: nn.Module) -> nn.Module | None:
    """The outermost module sharded by FSDP2's ``fully_shard`` that holds ``module``: the module
    itself, or a wrapper such as the ``PeftModel`` around it (the Trainer and accelerate shard the
    model they are given, layers and root, with ``fsdp_version: 2``); None when nothing is sharded.
    FSDP2 makes no wrapper object: it changes the class of the modules and turns their parameters
    into DTensors, which is how a sharded model is recognised before the (once per model) search."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can have been sharded
    module_class = getattr(fsdp, "FSDPModule", None)
    if module_class is None:
        return None
    if isinstance(module, module_class):
        return module
    from torch.distributed.tensor import DTensor

    if not any(isinstance(parameter, DTensor) for parameter in module.parameters()):
        return None
    import gc

    roots = [candidate for candidate in gc.get_objects()
             if isinstance(candidate, module_class) and any(inner is module for inner in candidate.modules())]
    return max(roots, key=lambda root: sum(1 for _ in root.modules()), default=None)


def all_reduce_gradients(parameters) -> None:
    """Average ``.grad`` over ranks, as DDP's reducer would have."""
    world, _ = distributed_world()
    for parameter in parameters:
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad.div_(world)


def accelerator_devices(devices: Iterable[torch.device | str]) -> dict[str, list[int]]:
    """The non-CPU devices among ``devices``, grouped by type (``{"cuda": [0, 1]}``); a device without
    an index means that type's current device."""
    grouped: dict[str, list[int]] = {}
    for device in devices:
        device = torch.device(device)
        if device.type in ("cpu", "meta"):
            continue
        index = device.index
        if index is None:
            current = getattr(torch.get_device_module(device.type), "current_device", None)
            index = current() if current is not None else 0
        indices = grouped.setdefault(device.type, [])
        if index not in indices:
            indices.append(index)
    return grouped


class RandomState:
    """The CPU generator's state and those of the accelerator devices in use, taken before a
    mini-batch's first forward, so that GradCache's second pass can re-run it with the same dropout
    masks (as sentence-transformers' ``RandContext``)."""

    def __init__(self, devices: dict[str, list[int]]):
        self.cpu_state = torch.get_rng_state()
        self.device_states = {
            kind: [(index, torch.get_device_module(kind).get_rng_state(index)) for index in indices]
            for kind, indices in devices.items()
        }

    @contextmanager
    def replayed(self):
        """Inside: the generators as they were when this state was taken. On leaving, also by an
        exception: the caller's generators as they were on entering (``torch.random.fork_rng`` over
        the CPU and every device captured)."""
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[], device_type="cpu"))  # the CPU generator
            for kind, states in self.device_states.items():
                stack.enter_context(torch.random.fork_rng(devices=[index for index, _ in states], device_type=kind))
            torch.set_rng_state(self.cpu_state)
            for kind, states in self.device_states.items():
                module = torch.get_device_module(kind)
                for index, state in states:
                    module.set_rng_state(state, index)
            yield


class AutocastState:
    """The autocast settings (enabled, dtype) of each device kind, taken during GradCache's first pass, to
    re-enter in its second: the Trainer's ``--bf16`` / ``--fp16`` put the forward under autocast but not
    the backward, from which the second pass runs, so it would otherwise recompute in float32 another
    function than the one whose embeddings gave the loss (and keep float32 activations)."""

    def __init__(self, kinds: Iterable[str]):
        self.settings = [(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
                         for kind in dict.fromkeys(["cpu", *kinds])]

    @contextmanager
    def entered(self):
        with ExitStack() as stack:
            for kind, enabled, dtype in self.settings:
                stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=enabled))
            yield


def cached_contrastive_loss(
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss_fn: nn.Module,
    query_inputs: tuple[torch.Tensor, torch.Tensor],
    document_inputs: tuple[torch.Tensor, torch.Tensor],
    mini_batch_size: int,
    after_backward: Callable[[], None] | None = None,
    devices: Iterable[torch.device | str] | None = None,
    embed_with_graph: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GradCache (Gao et al. 2021): the loss of the full contrastive batch with the memory of one
    mini-batch.

    1. Embed every mini-batch without a graph, remembering its random state.
    2. Compute the loss over all embeddings and its gradient with respect to the embeddings only.
    3. Return the loss as a leaf whose backward hook re-embeds each mini-batch with a graph (same
       random state, so the same dropout) and back-propagates the cached embedding gradient, scaled
       by the incoming gradient (loss scaling, gradient accumulation).
    Loss and parameter gradients equal the uncached ones up to floating-point summation order.
    ``after_backward`` runs once all mini-batches are back-propagated (gradient synchronisation
    under DDP). ``devices``: every device the model draws random numbers on (a model split over
    several GPUs); by default the devices of the inputs. The second pass runs under the autocast
    settings of the first (:class:`AutocastState`). The devices' generators (and the CPU's) are
    replayed, and the replay leaves the caller's generators as it found them, even when it fails:
    a training step with GradCache advances them exactly as its first pass, the plain forward, does.
    ``embed_with_graph``: what the second pass calls instead of ``embed`` (FSDP2 needs the model's
    own ``__call__`` there, since that pass runs outside the forward that unsharded its weights).
    Returns the loss and the (graph-free) query embeddings.
    """
    if devices is None:
        devices = [tensor.device for pair in (query_inputs, document_inputs) for tensor in pair if tensor is not None]
    devices = accelerator_devices(devices)
    autocast = AutocastState(devices)  # the first pass's precision, for the second
    chunks = []  # (kind, input_ids, attention_mask, random state)
    cached = {"query": [], "document": []}
    with torch.no_grad():
        for kind, (input_ids, attention_mask) in (("query", query_inputs), ("document", document_inputs)):
            for start in range(0, input_ids.shape[0], mini_batch_size):
                ids = input_ids[start : start + mini_batch_size]
                mask = None if attention_mask is None else attention_mask[start : start + mini_batch_size]
                state = RandomState(devices)
                cached[kind].append(embed(ids, mask))
                chunks.append((kind, ids, mask, state))
    queries = torch.cat(cached["query"]).detach().requires_grad_(True)
    documents = torch.cat(cached["document"]).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(queries, documents)
        query_grad, document_grad = torch.autograd.grad(loss, [queries, documents])
    grads = {"query": query_grad.split(mini_batch_size), "document": document_grad.split(mini_batch_size)}
    position = {"query": 0, "document": 0}
    plan = []
    for kind, ids, mask, state in chunks:
        plan.append((ids, mask, state, grads[kind][position[kind]]))
        position[kind] += 1

    def replay(grad_output: torch.Tensor) -> None:
        with torch.enable_grad():
            for ids, mask, state, grad in plan:
                with state.replayed():  # the backward too: a recomputing checkpoint may draw
                    with autocast.entered():  # the forward only, as the first pass ran
                        embeddings = (embed_with_graph or embed)(ids, mask)
                    torch.autograd.backward(embeddings, grad.to(embeddings.dtype) * grad_output.to(embeddings.dtype))
        if after_backward is not None:
            after_backward()

    result = loss.detach().requires_grad_(True)
    result.register_hook(replay)
    return result, queries.detach()


__all__ = [
    "InfoNCELoss", "all_gather_with_grad", "all_reduce_gradients", "cached_contrastive_loss", "distributed_world",
    "find_ddp_wrapper", "find_fully_sharded_root", "text_keys",
]
