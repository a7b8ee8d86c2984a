"""Find the operations that make the host wait for the GPU, on any device, the CPU included.

A CUDA kernel launch returns at once, so the host can prepare the next batch while the GPU runs
this one. Some operations cannot return before the GPU has caught up, because the host needs a
value it computes: reading a scalar (``.item()``, ``bool(t)``, ``if t.any():``), an output whose
size depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``,
``repeat_interleave`` without ``output_size``), a copy to the host. Each one drains the GPU's
queue, and on short batches that idle time is the gap between a wrapper and the raw backbone.

``torch.cuda.set_sync_debug_mode`` finds them, but only on a GPU. This module intercepts the aten
operations themselves (a ``TorchDispatchMode``), so the same code paths are audited on the CPU
before any device time is spent, and each operation is attributed to the first frame outside
torch that caused it (our code, or transformers'). Device copies are the one kind that only a GPU
shows (on the CPU ``.cpu()`` dispatches nothing); ``tests/test_gpu.py`` covers them with the sync
debug mode.

    with HostSyncAudit() as audit:
        model.encode(texts, batch_size=64)
    print(audit.summary())
"""

from __future__ import annotations

import collections
import os
import traceback
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALAR_READS = {"_local_scalar_dense", "is_nonzero", "item", "equal"}
"""``item()``, ``bool()``, ``int()``, ``float()`` of a tensor, every Python ``if`` on one (``bool`` of a
one-element tensor dispatches ``is_nonzero``), and ``torch.equal``."""
DATA_DEPENDENT_SHAPES = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
                         "unique_dim", "bincount", "histc"}
"""Operations whose output size the host must read back before it can allocate the result."""

_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass(frozen=True)
class HostSync:
    """One operation that would synchronise the host with a CUDA device."""

    op: str
    where: str  # "path/file.py:line in function", the first frame outside torch


def _is_sync(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name in SCALAR_READS or name in DATA_DEPENDENT_SHAPES:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices or ())
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and not (len(args) > 3 and args[3] is not None)
    if name in ("_to_copy", "to", "copy_"):  # a copy between the host and a GPU (never seen on the CPU)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        target = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, torch.device)), None)
        devices = {t.device.type for t in tensors} | ({torch.device(target).type} if target is not None else set())
        return "cpu" in devices and len(devices) > 1
    return False


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if not frame.filename.startswith(_TORCH_DIR) and not frame.filename.endswith("sync_audit.py"):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "<torch>"


class HostSyncAudit(TorchDispatchMode):
    """Records every host-syncing operation run while active (see the module docstring)."""

    supports_higher_order_operators = True  # flex attention is one; it runs as is (its kernel reads nothing back)

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[HostSync] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not isinstance(func, torch._ops.OpOverload):
            return func(*args, **kwargs)
        if _is_sync(func, args, kwargs):
            self.syncs.append(HostSync(func.overloadpacket.__name__, _caller()))
        return func(*args, **kwargs)

    def count(self, path_part: str | None = None) -> int:
        """Syncs whose caller's path contains ``path_part`` (all of them for None)."""
        return sum(1 for sync in self.syncs if path_part is None or path_part in sync.where)

    def summary(self) -> str:
        """One line per distinct (operation, caller), most frequent first."""
        counts = collections.Counter(self.syncs)
        return "\n".join(f"{n:5d}  {sync.op:<22} {sync.where}" for sync, n in counts.most_common()) or "(none)"


__all__ = ["DATA_DEPENDENT_SHAPES", "SCALAR_READS", "HostSync", "HostSyncAudit"]
