"""Per-layer vectors for multi-layer pooling, without keeping every layer's states at inference.

``output_hidden_states=True`` keeps every layer's (B, T, H) states alive until the forward pass
ends (NOTES: 28.4 vs 20.9 GiB on a 7B model). A forward hook on each selected decoder layer
catches its output instead:

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

import torch
from torch import nn


def hooks_run_inside_checkpoint(layer: nn.Module) -> bool:
    """Whether activation checkpointing is on for ``layer`` and wraps its ``__call__`` (so that its
    forward hooks are part of the checkpointed, recomputed region)."""
    if not (getattr(layer, "gradient_checkpointing", False) and layer.training):
        return False
    return any("__call__" in vars(cls) for cls in type(layer).__mro__ if cls is not nn.Module and cls is not object)


def find_decoder_layers(backbone: nn.Module, num_layers: int) -> nn.ModuleList:
    """The backbone's list of transformer blocks (``layers`` in llama, ``h`` in gpt2, ...)."""
    candidates = [
        (name, module)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"multi_layer pooling: expected exactly one ModuleList of {num_layers} decoder layers in "
            f"{type(backbone).__name__}, found {[name for name, _ in candidates]}; use another pooling."
        )
    return candidates[0][1]


class LayerStateCollector:
    """Hooks that collect one vector per text from selected layers during a forward pass.

    Layers are numbered 1..L like ``hidden_states[1:]``. Layer L is taken from the backbone's final
    output (after its final norm, the same states the single-layer heads pool), so no hook is
    placed on the last block.
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        layer_numbers: list[int],
        reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ):
        self.layer_numbers = list(layer_numbers)
        self.num_layers = len(layers)
        self.reduce = reduce
        self._attention_mask: torch.Tensor | None = None  # set only while collecting
        self._unpack: Callable[[torch.Tensor], torch.Tensor] | None = None  # packed batch -> padded layout
        self._caught: dict[int, torch.Tensor] = {}
        for number in self.layer_numbers:
            if number != self.num_layers:
                layers[number - 1].register_forward_hook(self._make_hook(number))

    def _make_hook(self, number: int):
        def hook(module, args, output):
            mask = self._attention_mask
            if mask is None:  # the backbone runs on its own, or a checkpoint recomputes this layer
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if self._unpack is not None:
                hidden = self._unpack(hidden)
            keep_states = torch.is_grad_enabled() and hooks_run_inside_checkpoint(module)
            self._caught[number] = hidden if keep_states else self.reduce(hidden, mask)

        return hook

    @contextmanager
    def collect(self, attention_mask: torch.Tensor, unpack: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Collect during the ``with`` block; read the result with :meth:`stack` after it. ``unpack``
        maps a packed batch's layer output to the padded layout ``attention_mask`` describes."""
        self._attention_mask = attention_mask
        self._unpack = unpack
        self._caught = {}
        try:
            yield self
        finally:
            self._attention_mask = None
            self._unpack = None

    def stack(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L_selected, H), in the configured layer order."""
        vectors = []
        for number in self.layer_numbers:
            if number == self.num_layers:
                vectors.append(self.reduce(last_hidden_state, attention_mask))
                continue
            caught = self._caught[number]
            if caught.dim() == 3:  # kept as states (see the module docstring): reduce now, outside any checkpoint
                caught = self.reduce(caught, attention_mask.to(caught.device))
            vectors.append(caught.to(last_hidden_state.device))
        self._caught = {}
        return torch.stack(vectors, dim=1)
