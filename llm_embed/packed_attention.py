"""Packed ``encode`` batches through flex attention on a backbone built for SDPA (issue 13).

Packing a call's texts end to end (``llm_embed.packing``) is exact and, on an H100, 14-22 % faster
than padding under flex attention, but flex is not the implementation transformers picks, and
switching the whole backbone to it would move the training path too. So this module registers,
once per process, one more attention implementation, ``SDPA_WITH_FLEX``: SDPA for every mask
transformers builds (padded batches, training, anything with a tensor mask or none) and flex
attention for the ``BlockMask`` a packed batch carries. :func:`enable_packed_flex` switches an SDPA
backbone to it; ``encode`` does so on CUDA, where flex attention compiles to fused kernels, and
then packs by default (``llm_embed.packing.resolve_packing``).

The choice is made per attention call by the mask's type, not by a mode flag on the model, so a
thread that trains or encodes padded while another encodes packed gets SDPA exactly as before. The
name lives only in the backbone's runtime config (``_attn_implementation`` is not saved), so saved
checkpoints still say ``sdpa``.
"""

from __future__ import annotations

import threading

import torch

SDPA_WITH_FLEX = "llm_embed_sdpa_flex"
"""The registered implementation: SDPA, and flex attention for a ``BlockMask``."""

_LOCK = threading.Lock()


def flex_attention_usable() -> bool:
    """Whether this torch and transformers can run flex attention at all."""
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
        from transformers.utils import is_torch_flex_attn_available
    except ImportError:
        return False
    return bool(is_torch_flex_attn_available())


def sdpa_or_flex_attention(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """The attention function behind ``SDPA_WITH_FLEX``: flex attention for a packed batch's
    ``BlockMask``, transformers' SDPA function for anything else (its own mask, or none)."""
    from torch.nn.attention.flex_attention import BlockMask

    if isinstance(attention_mask, BlockMask):
        from transformers.integrations.flex_attention import flex_attention_forward

        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_WITH_FLEX, sdpa_or_flex_attention)
    AttentionMaskInterface.register(SDPA_WITH_FLEX, sdpa_mask)  # padded masks: exactly SDPA's


def enable_packed_flex(backbone: torch.nn.Module) -> bool:
    """Switch an SDPA backbone to ``SDPA_WITH_FLEX``; True if it uses it now. Left alone (False):
    other implementations (eager, flash, flex itself: each already has its own packing mode),
    backbones whose class does not declare flex support, a torch without flex attention."""
    config = backbone.config
    with _LOCK:
        implementation = getattr(config, "_attn_implementation", None)
        if implementation == SDPA_WITH_FLEX:
            return True
        if implementation != "sdpa" or not getattr(backbone, "_supports_flex_attn", False):
            return False
        if not flex_attention_usable():
            return False
        _register()
        backbone.set_attn_implementation(SDPA_WITH_FLEX)
        return True


__all__ = ["SDPA_WITH_FLEX", "enable_packed_flex", "flex_attention_usable", "sdpa_or_flex_attention"]
