"""Per-layer vectors for multi-layer pooling, without keeping every layer's states at inference.

``output_hidden_states=True`` keeps every layer's (B, T, H) states alive until the forward pass
ends (28.4 vs 20.9 GiB peak on an H100 for a Mistral-7B-shaped model at 64x512, bf16). A forward hook
on each selected decoder layer catches its output instead:

- without gradients (inference, ``encode``) the hook reduces it to (B, H) at once (masked mean or
  last token), so the full states are freed as usual;
- with gradients it does the same, except where the hook runs *inside* a checkpointed region:
  transformers versions up to about 5.2x checkpoint a layer's ``__call__`` (5.24 checkpoints
  ``forward``, hooks outside), and re-run its hooks during backward; a reduction there would have
  to match the original forward tensor for tensor, which it cannot when several forwards share one
  backward (the contrastive loss's query and document passes). There the hook only keeps a
  reference and the reduction runs after the backbone's forward, outside any checkpoint, at the
  cost of keeping those layer outputs until backward (measured on an H200 with transformers 5.17:
  8.62 vs 7.31 GiB peak for a Qwen2-0.5B-shaped model, 64 queries x 3 x 256 tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn


def hooks_run_inside_checkpoint(layer: nn.Module) -> bool:
    """Whether activation checkpointing is on for ``layer`` and wraps its ``__call__`` (so that its
    forward hooks are part of the checkpointed, recomputed region)."""
    if not (getattr(layer, "gradient_checkpointing", False) and layer.training):
        return False
    return any("__call__" in vars(cls) for cls in type(layer).__mro__ if cls is not nn.Module and cls is not object)


_DECLARATIONS = ("_can_record_outputs['hidden_states']", "_no_split_modules")


def _declared_layer_specs(backbone: nn.Module) -> list[tuple[str, list | None]]:
    """What the backbone's transformers class says its decoder layers are, most specific first, as
    (declaration, specs or None when not declared):

    - ``_can_record_outputs["hidden_states"]`` (transformers 5: the module class whose outputs are
      the hidden states, a name, an ``OutputRecorder`` or a list of these; absent for some models on
      older 5.x, e.g. GPT-2 on 5.2);
    - ``_no_split_modules`` (class names of the blocks transformers keeps on one device).
    """
    recorded = (getattr(backbone, "_can_record_outputs", None) or {}).get("hidden_states")
    if recorded is not None and not isinstance(recorded, list):
        recorded = [recorded]
    no_split = getattr(backbone, "_no_split_modules", None)
    return list(zip(_DECLARATIONS, (recorded or None, sorted(no_split) if no_split else None)))


def _spec_matches(spec, path: str, module: nn.Module) -> bool:
    """Whether the module at ``path`` is one that ``spec`` declares: a class (isinstance), a name
    (the module's class name, or a suffix of its path as transformers matches names), or an
    ``OutputRecorder`` (its ``target_class`` or ``class_name``, filtered by its ``layer_name``)."""
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, str):
        return type(module).__name__ == spec or path.endswith(spec)
    target, name = getattr(spec, "target_class", None), getattr(spec, "class_name", None)
    if not ((target is not None and isinstance(module, target)) or (name and _spec_matches(name, path, module))):
        return False
    layer_name = getattr(spec, "layer_name", None)
    return layer_name is None or f".{layer_name.strip('.')}." in f".{path}."


def _describe(specs: list) -> str:
    names = []
    for spec in specs:
        spec = getattr(spec, "target_class", None) or getattr(spec, "class_name", None) or spec
        names.append(spec.__name__ if isinstance(spec, type) else str(spec))
    return ", ".join(names)


def _paths(found: list[tuple[str, nn.Module]]) -> str:
    return "found none" if not found else f"found {len(found)} ({', '.join(path or '(root)' for path, _ in found)})"


def find_decoder_layers(backbone: nn.Module, num_layers: int) -> nn.ModuleList:
    """The backbone's list of ``num_layers`` transformer blocks (``layers`` in llama, mistral, qwen,
    gemma and phi3, ``h`` in gpt2), found through transformers' own declarations: the one
    ``nn.ModuleList`` whose every entry is a module the backbone's class declares as its decoder
    layer (:func:`_declared_layer_specs`). Without a usable declaration it falls back to the only
    ``nn.ModuleList`` of ``num_layers`` modules. A ``ValueError`` names the backbone class and what
    was looked for when nothing fits."""
    lists = [
        (path, module)
        for path, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers > 0
    ]
    looked_for = []
    for declaration, specs in _declared_layer_specs(backbone):
        if specs is None:
            looked_for.append(f"{declaration}: not declared")
            continue
        found = [
            (path, module)
            for path, module in lists
            if all(
                any(_spec_matches(spec, f"{path}.{index}" if path else str(index), layer) for spec in specs)
                for index, layer in enumerate(module)
            )
        ]
        if len(found) == 1:
            return found[0][1]
        looked_for.append(f"a ModuleList of {num_layers} {_describe(specs)} ({declaration}): {_paths(found)}")
    if len(lists) == 1:
        return lists[0][1]
    looked_for.append(f"else exactly one ModuleList of {num_layers} modules: {_paths(lists)}")
    raise ValueError(
        f"cannot find the {num_layers} decoder layers of {type(backbone).__name__} (multi_layer pooling and LoRA "
        f"need them); looked for {'; '.join(looked_for)}. Use another pooling, or a backbone whose transformers "
        "class declares its decoder layer class."
    )


class _CallState:
    """What one forward pass collects: its mask, its unpacking, and the layer vectors caught so far."""

    __slots__ = ("attention_mask", "unpack", "caught", "reduce")

    def __init__(self, attention_mask: torch.Tensor, unpack: Callable[[torch.Tensor], torch.Tensor] | None,
                 reduce: Callable[[torch.Tensor], torch.Tensor]):
        self.attention_mask = attention_mask
        self.unpack = unpack
        self.caught: dict[int, torch.Tensor] = {}
        self.reduce = reduce  # the layer reduction prepared for this call's mask (LayerReduction.prepare)


class _LayerHook:
    """The forward hook on one decoder layer: a plain object (not a closure) holding its collector, so
    that ``copy.deepcopy(model)`` gives the copy's layers hooks into the copy's collector (deepcopy's
    memo maps one to the other) and ``torch.save(model)`` can pickle it."""

    def __init__(self, collector: LayerStateCollector, number: int):
        self.collector = collector
        self.number = number

    def __call__(self, module: nn.Module, args, output) -> None:
        self.collector.catch(self.number, module, output)


class LayerStateCollector:
    """Hooks that collect one vector per text from selected layers during a forward pass.

    Layers are numbered 1..L like ``hidden_states[1:]``. Layer L is taken from the backbone's final
    output (after its final norm, the same states the single-layer heads pool), so no hook is
    placed on the last block.

    Thread safety: nothing of a forward pass is kept on the instance. :meth:`collect` opens a
    per-call state in a :class:`contextvars.ContextVar`, which every thread (and asyncio task) sees
    on its own, and the hooks, which run in the thread of the forward pass, write into the state of
    their own call. Several threads can therefore run one model at once (a web server's thread
    pool) and each gets exactly its own layer vectors.
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        layer_numbers: list[int],
        reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ):
        """``reduce(states, attention_mask)``: a ``LayerReduction`` (prepared once per call, see
        ``pooling.LayerReduction``) or any such function (called per layer)."""
        self.layer_numbers = list(layer_numbers)
        self.num_layers = len(layers)
        self.reduce = reduce
        self._active = self._new_context_var()
        for number in self.layer_numbers:
            if number != self.num_layers:
                layers[number - 1].register_forward_hook(_LayerHook(self, number))

    @staticmethod
    def _new_context_var() -> ContextVar[_CallState | None]:
        return ContextVar("llm_embed_layer_states", default=None)

    # A ContextVar can be neither copied nor pickled, and the state of a call in progress belongs to
    # that call only: a copy (deepcopy, pickle, torch.save) starts with a fresh, empty one.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_active"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._active = self._new_context_var()

    def catch(self, number: int, module: nn.Module, output) -> None:
        """Hook body: reduce (or keep, see the module docstring) layer ``number``'s output for this call."""
        state = self._active.get()
        if state is None:  # the backbone runs on its own, or a checkpoint recomputes this layer in backward
            return
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if state.unpack is not None:
            hidden = state.unpack(hidden)
        keep_states = torch.is_grad_enabled() and hooks_run_inside_checkpoint(module)
        state.caught[number] = hidden if keep_states else state.reduce(hidden)

    @contextmanager
    def collect(self, attention_mask: torch.Tensor, unpack: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Collect during the ``with`` block, which yields this call's state; pass it to :meth:`stack`
        after the block. ``unpack`` maps a packed batch's layer output to the padded layout
        ``attention_mask`` describes."""
        prepare = getattr(self.reduce, "prepare", None)  # a LayerReduction; a plain function runs per layer
        if prepare is not None:
            reduce = prepare(attention_mask)
        else:
            def reduce(states):
                return self.reduce(states, attention_mask)
        state = _CallState(attention_mask, unpack, reduce)
        token = self._active.set(state)
        try:
            yield state
        finally:
            self._active.reset(token)

    def stack(self, state: _CallState, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L_selected, H) of one call, in the configured layer order."""
        vectors = []
        for number in self.layer_numbers:
            if number == self.num_layers:
                same_mask = attention_mask is state.attention_mask
                vectors.append(state.reduce(last_hidden_state) if same_mask
                               else self.reduce(last_hidden_state, attention_mask))
                continue
            caught = state.caught.get(number)
            if caught is None:
                raise RuntimeError(
                    f"multi_layer pooling: decoder layer {number} did not run during this forward pass (its hook "
                    "caught nothing); the backbone skipped it or was called outside LLMEmbeddingModel.embed"
                )
            if caught.dim() == 3:  # kept as states (see the module docstring): reduce now, outside any checkpoint
                caught = (state.reduce(caught) if attention_mask is state.attention_mask
                          else self.reduce(caught, attention_mask.to(caught.device)))
            vectors.append(caught.to(last_hidden_state.device))
        state.caught.clear()
        # A prepared reduction returns its accumulation dtype (pooling.LayerReduction): one cast for all layers.
        return torch.stack(vectors, dim=1).to(last_hidden_state.dtype)


__all__ = ["LayerStateCollector", "find_decoder_layers", "hooks_run_inside_checkpoint"]
