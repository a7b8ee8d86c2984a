"""Attention mode of the backbone: how a decoder is made bidirectional, and when it cannot be.

transformers >= 5.2 builds every decoder's attention mask through ``masking_utils``; with
``config.is_causal = False`` those helpers return bidirectional (padding-only) masks, including
the sliding-window variant. That alone is not enough: when a batch has no padding the helpers
return ``None`` and the SDPA / flash kernels fall back to the attention module's own
``is_causal`` attribute, which defaults to ``True``; the model then silently stays causal (the
trap that broke LLM2Vec and others). :func:`make_bidirectional` therefore also switches every
attention module's ``is_causal`` flag, and refuses backbones whose modeling code bypasses
``masking_utils`` (they would keep their hard-coded causal masks).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedConfig

# Names a modeling module imports from ``transformers.masking_utils`` when its masks go through it.
MASK_BUILDERS = (
    "create_causal_mask",
    "create_sliding_window_causal_mask",
    "create_masks_for_generate",
    "create_bidirectional_mask",
)


def backbone_model_class(backbone_config: PreTrainedConfig) -> type:
    """The class ``AutoModel.from_config`` builds for this backbone config."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(backbone_config)]
    except KeyError as err:
        raise ValueError(
            f"backbone model_type {backbone_config.model_type!r} has no AutoModel class in this transformers "
            "version; use a decoder that transformers ships (llama, mistral, qwen2, qwen3, gemma, phi3, gpt2, ...)."
        ) from err


def check_decoder(backbone_config: PreTrainedConfig) -> None:
    """Raise ``ValueError`` unless the backbone is a decoder-only language model. Encoders (BERT:
    bidirectional whatever ``attention`` says) and encoder-decoders (T5) are not what the package
    wraps; they would run in another attention mode than configured, or fail later with an
    unrelated error. A decoder has a causal-LM class and neither a masked-LM nor a seq2seq one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = backbone_config.model_type
    encoder_only = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    encoder_decoder = getattr(backbone_config, "is_encoder_decoder", False) or (
        model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )
    if encoder_only or encoder_decoder or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        kind = "an encoder-decoder" if encoder_decoder else "an encoder" if encoder_only else "not a decoder LM"
        raise ValueError(
            f"backbone model_type {model_type!r} is {kind}; llm_embed wraps decoder-only language models (llama, "
            "mistral, qwen2, qwen3, gemma, phi3, gpt2, ...). For an encoder such as BERT use sentence-transformers "
            "directly."
        )


def uses_masking_utils(model_class: type) -> bool:
    """Whether the backbone's modeling module builds its masks with ``transformers.masking_utils``."""
    module = sys.modules.get(model_class.__module__)
    return module is not None and any(hasattr(module, name) for name in MASK_BUILDERS)


def check_bidirectional_support(backbone_config: PreTrainedConfig) -> None:
    """Raise ``ValueError`` when bidirectional attention cannot be applied to this backbone (what the
    config tells; :func:`make_bidirectional` checks the built layers)."""
    model_class = backbone_model_class(backbone_config)
    if not uses_masking_utils(model_class):
        raise ValueError(
            f"attention='bidirectional' cannot be applied to backbone model_type {backbone_config.model_type!r}: "
            f"{model_class.__name__} does not build its attention masks with transformers.masking_utils, so it "
            "would silently stay causal. Use attention='causal' with this backbone, or a backbone such as "
            "llama, mistral, qwen2, qwen3, gemma, phi3 or gpt2."
        )
    layer_types = getattr(backbone_config, "layer_types", None) or ()
    if "chunked_attention" in layer_types:
        # masking_utils' chunked mask ignores config.is_causal: those layers would stay causal whenever a
        # mask is built (a padded batch), and a text's vector would depend on its batch (llama4)
        raise ValueError(
            f"attention='bidirectional' cannot be applied to backbone model_type {backbone_config.model_type!r}: "
            "its chunked-attention layers (layer_types 'chunked_attention') build causal masks whatever "
            "is_causal says, so they would stay causal. Use attention='causal' with this backbone."
        )


def check_causal_support(backbone_config: PreTrainedConfig) -> None:
    """Raise ``ValueError`` when ``attention='causal'`` would not be causal: a backbone config that asks
    its own code for bidirectional attention (``is_causal=False``; ``use_bidirectional_attention=True``,
    as EmbeddingGemma's Gemma 3 configs ship)."""
    if getattr(backbone_config, "is_causal", True) is not True:
        raise ValueError(
            "attention='causal' but the backbone's config has is_causal=False; remove it from backbone_config"
        )
    if getattr(backbone_config, "use_bidirectional_attention", False):
        raise ValueError(
            f"attention='causal' but the backbone config ({backbone_config.model_type}) sets "
            "use_bidirectional_attention=True, so the backbone attends in both directions by itself. Use "
            "attention='bidirectional' (in a saved config.json too: it computes what such a checkpoint computed), "
            "or set use_bidirectional_attention=False in backbone_config to run it causally."
        )


def builds_own_bidirectional_masks(backbone: nn.Module) -> bool:
    """Whether the backbone makes its bidirectional masks itself from ``use_bidirectional_attention``
    (Gemma 3: a sliding window of ``|i - j| < window``, where ``masking_utils``' bidirectional one is
    ``<=``). ``config.is_causal`` is then left alone, so the checkpoint keeps the masks it was trained
    with; the attention modules' ``is_causal`` already follows the flag."""
    if not getattr(backbone.config, "use_bidirectional_attention", False):
        return False
    try:
        source = inspect.getsource(type(backbone).forward)
    except (OSError, TypeError):  # no source to read: masking_utils' masks, bidirectional all the same
        return False
    return "use_bidirectional_attention" in source


def check_layers_attend(backbone: nn.Module, layers: Sequence[nn.Module]) -> None:
    """Refuse a backbone with a decoder layer that bidirectional attention cannot reach: one without an
    attention module (a state-space, recurrent, convolution or linear-attention layer: jamba, lfm2,
    qwen3_next, recurrent_gemma), causal by construction, or whose attention keeps a hard-coded causal
    mask buffer (gpt_neo). Only the other layers would turn bidirectional, with no error. ``layers``: the
    backbone's decoder layers (``layer_states.find_decoder_layers``)."""
    for number, layer in enumerate(layers, start=1):
        attention = [module for module in layer.modules() if isinstance(getattr(module, "is_causal", None), bool)]
        if not attention:
            raise ValueError(
                f"attention='bidirectional' cannot be applied to {type(backbone).__name__}: its layer {number} "
                f"({type(layer).__name__}) mixes tokens without attention (a state-space, recurrent, convolution or "
                "linear-attention layer), which is causal by construction, so only its attention layers would "
                "turn bidirectional. Use attention='causal' with this backbone."
            )
        for module in attention:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.dtype == torch.bool and buffer.ndim >= 2 and buffer.shape[-1] == buffer.shape[-2] > 1:
                    raise ValueError(
                        f"attention='bidirectional' cannot be applied to {type(backbone).__name__}: its attention "
                        f"({type(module).__name__}) applies its own causal mask (buffer {name!r}) whatever "
                        "is_causal says, so it would stay causal. Use attention='causal' with this backbone."
                    )


def make_bidirectional(backbone: nn.Module, layers: Sequence[nn.Module]) -> int:
    """Switch a built backbone to bidirectional attention; returns the number of attention modules switched.

    Sets ``config.is_causal = False`` (read by ``masking_utils``; unless the backbone builds its own
    bidirectional masks, :func:`builds_own_bidirectional_masks`) and ``is_causal = False`` on every
    attention module (read by the SDPA / flash / flex integrations when no mask is materialised), after
    checking that every one of its decoder ``layers`` attends (:func:`check_layers_attend`).
    """
    if not uses_masking_utils(type(backbone)):
        raise ValueError(
            f"attention='bidirectional' cannot be applied to {type(backbone).__name__}: it does not build its "
            "attention masks with transformers.masking_utils. Use attention='causal'."
        )
    check_layers_attend(backbone, layers)
    if not builds_own_bidirectional_masks(backbone):
        backbone.config.is_causal = False
    switched = 0
    for module in backbone.modules():
        if module is not backbone and isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = False
            switched += 1
    if switched == 0:
        raise ValueError(
            f"attention='bidirectional': found no attention module with an `is_causal` flag in "
            f"{type(backbone).__name__}, so kernels could still run causally. Use attention='causal'."
        )
    return switched


__all__ = [
    "backbone_model_class", "builds_own_bidirectional_masks", "check_bidirectional_support", "check_causal_support",
    "check_decoder", "check_layers_attend", "make_bidirectional", "uses_masking_utils",
]
