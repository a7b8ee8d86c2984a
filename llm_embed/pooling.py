"""Pooling heads: turn token states (and, for multi-layer pooling, per-layer vectors) into one vector.

Every head is one small ``nn.Module`` registered under a name with :func:`register_pooling_head`;
the model looks the configured name up in :data:`POOLING_HEADS` (no if-chains). Every head masks
padding and works with left or right padding, so a text's embedding does not depend on what
else shares its batch. A head owns all of its behaviour: ``forward``, the initialisation of its own
parameters (:meth:`PoolingHead.init_weights`) and its rows of the model card
(:meth:`PoolingHead.card_rows`); the model and the card ask the head, never test its class.

The trainable heads follow Tang & Yang (2024) with the reference code's defects fixed:
the cross-attention masks padding, sizes come from the config, and the latents enter only as
queries (no residual from the input-independent latents, which would add the same constant to
every embedding).

With ``config.pooling_residual`` a trainable head starts at its baseline instead: it adds its
cross-attention and feed-forward output to a parameter-free reduction of its input (the last
layer's ``layer_reduction`` for ``latent_attention``, the mean of the per-layer reductions for
``multi_layer``, each RMS-normalised first), and the two output projections start at zero
(ReZero / zero-init residual, as ControlNet's zero convolutions and GPT-2-style "init the last
layer of a residual branch small").
An untrained head then returns exactly the baseline pooling instead of a random projection of it,
and training can only move away from the baseline where the loss says so. The default is the
paper's head (``pooling_residual=False``): at the study's head learning rate the zero-initialised
branches grow too slowly and the residual heads trained worse (docs/results.md).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init


class HeadConfig(Protocol):
    """What the heads read from the model's config (``LLMEmbeddingConfig`` provides it). A protocol
    rather than the config class itself: the config imports this module to validate pooling names,
    so this module must not import the config."""

    backbone_hidden_size: int
    num_latents: int
    pooling_attention_heads: int
    pooling_head_dim: int
    pooling_ff_mult: float
    pooling_layers: list[int] | None
    resolved_pooling_layers: list[int]
    layer_reduction: str
    pooling_residual: bool


POOLING_HEADS: dict[str, type[PoolingHead]] = {}


def register_pooling_head(name: str):
    """Class decorator: make a head available as ``LLMEmbeddingConfig(pooling=name)``. Misuse is
    refused here rather than later, where it would read as an unknown pooling name."""
    if isinstance(name, type):
        raise TypeError(f"register_pooling_head takes the head's name: write @register_pooling_head(\"my_head\") "
                        f"above class {name.__name__}, not @register_pooling_head")
    if not isinstance(name, str) or not name:
        raise TypeError(f"a pooling head's name must be a non-empty string, not {name!r}")

    def wrap(cls: type[PoolingHead]) -> type[PoolingHead]:
        if not (isinstance(cls, type) and issubclass(cls, PoolingHead)):
            raise TypeError(f"register_pooling_head({name!r}) decorates a subclass of llm_embed.PoolingHead, "
                            f"not {cls!r}: the model calls its init_weights, reads_options and card_rows")
        if name in POOLING_HEADS:
            raise ValueError(f"a pooling head named {name!r} is already registered ({POOLING_HEADS[name].__name__})")
        cls.name = name
        POOLING_HEADS[name] = cls
        return cls

    return wrap


# ----------------------------------------------------------------------------- reductions over tokens


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token; correct for left and right padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(dim=-1)


def last_token(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the state of each row's last real token (EOS when it is appended)."""
    rows = torch.arange(states.shape[0], device=states.device)
    return states[rows, last_token_index(attention_mask)]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reduction over tokens sums in: float32 at least. A float16 sum of a few hundred
    states overflows (|h| ~ 700 over 472 tokens is past 65504) although their mean fits, and
    bfloat16 counts tokens wrongly past 256; the result is cast back to the states' dtype."""
    return torch.promote_types(dtype, torch.float32)


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): mean over real tokens, summed in :func:`accumulation_dtype`. ``where``
    rather than a product, so that a non-finite state at a padded position (fully masked query rows)
    cannot leak in."""
    mask = attention_mask.bool().unsqueeze(-1)
    summed = torch.where(mask, states, 0).sum(dim=1, dtype=accumulation_dtype(states.dtype))
    return (summed / mask.sum(dim=1)).to(states.dtype)


def position_weighted_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): SGPT's weighted mean, weight i for the i-th real token (counted from
    the first real token, so left padding does not shift the weights). The weights are i / n (n the
    text's real tokens: at most 1, so no product overflows) and the sums are in
    :func:`accumulation_dtype` (the plain weights 1 + ... + n pass float16's 65504 at n = 362)."""
    mask = attention_mask.bool()
    accumulate = accumulation_dtype(states.dtype)
    positions = mask.cumsum(dim=-1) * mask
    weights = (positions / mask.sum(dim=-1, keepdim=True).clamp(min=1)).to(states.dtype).unsqueeze(-1)
    summed = torch.where(mask.unsqueeze(-1), states * weights, 0).sum(dim=1, dtype=accumulate)
    return (summed / weights.sum(dim=1, dtype=accumulate)).to(states.dtype)


class LayerReduction:
    """A reduction over tokens applied to many layers of one forward pass (multi-layer pooling).

    Everything that depends only on the mask is computed once per pass by :meth:`prepare`, so each
    layer costs one kernel (last token: one gather) or three (mean: ``where``, ``sum``, divide) instead
    of the six small kernels of :func:`last_token` / :func:`masked_mean` per layer, which dominate the
    multi_layer head's cost on short batches. The results are the same operations on the same values,
    so they equal those functions exactly once cast to the states' dtype: a prepared function may
    return its :func:`accumulation_dtype` (the collector casts the stacked layers once, not each layer).
    Called directly, it prepares and reduces one tensor and returns the states' dtype."""

    def prepare(self, attention_mask: torch.Tensor):
        """A function ``(B, T, H) -> (B, H)`` for this mask (in the states' or the accumulation dtype)."""
        raise NotImplementedError

    def __call__(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.prepare(attention_mask)(states).to(states.dtype)


class MeanReduction(LayerReduction):
    """:func:`masked_mean`, prepared once per pass (returned in float32 for float16 / bfloat16 states)."""

    def prepare(self, attention_mask):
        valid = attention_mask.bool().unsqueeze(-1)
        count = valid.sum(dim=1)
        per_dtype: dict[torch.dtype, tuple[torch.Tensor, torch.dtype]] = {}  # (zero, accumulation dtype)

        def reduce(states: torch.Tensor) -> torch.Tensor:
            if states.dtype not in per_dtype:
                per_dtype[states.dtype] = (states.new_zeros(()), accumulation_dtype(states.dtype))
            zero, accumulate = per_dtype[states.dtype]
            return torch.where(valid, states, zero).sum(dim=1, dtype=accumulate) / count  # cast by the caller

        return reduce


class LastTokenReduction(LayerReduction):
    """:func:`last_token`, prepared once per pass: one gather per layer."""

    def prepare(self, attention_mask):
        rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)
        index = last_token_index(attention_mask)
        return lambda states: states[rows, index]


LAYER_REDUCTIONS: dict[str, LayerReduction] = {"mean": MeanReduction(), "last_token": LastTokenReduction()}


def rms_normalize(vectors: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each vector to root-mean-square 1 (direction kept). A decoder's layers differ in scale by
    orders of magnitude (a few "massive activation" dimensions grow with depth), so a plain mean over
    layers is the last layers' vector; after this every layer counts alike, and the baseline is on
    the scale of the head's LayerNorm-fed correction."""
    return F.rms_norm(vectors, vectors.shape[-1:], eps=eps)


# ----------------------------------------------------------------------------- heads


class PoolingHead(nn.Module, metaclass=ABCMeta):
    """Base class. ``forward(token_states, attention_mask, layer_states)`` returns (B, H).

    A subclass implements ``forward`` (abstract here) and, when it holds ``nn.Parameter``s of its own,
    :meth:`init_weights`; it may add design rows to the model card with :meth:`card_rows`.
    """

    name: ClassVar[str] = ""
    # The head reads one reduced vector per transformer layer (the model then collects them).
    needs_layer_states: ClassVar[bool] = False
    # The head-specific design options (configuration_llm_embed.HEAD_OPTIONS) this head reads; a config
    # that sets another one to a value of its own is refused (it would be saved and change nothing).
    # None: not declared (a head registered from user code), so not checked.
    reads_options: ClassVar[frozenset[str] | None] = None
    # Options of reads_options that the head reads only when a boolean option is true: {option: that option}.
    read_only_with: ClassVar[dict[str, str]] = {}

    def __init__(self, config: HeadConfig):
        super().__init__()

    @abstractmethod
    def forward(
        self, token_states: torch.Tensor, attention_mask: torch.Tensor, layer_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, H) token states, (B, T) mask, optional (B, L, H) layer vectors -> (B, H)."""

    def init_weights(self, std: float) -> None:
        """Initialise the parameters this module holds directly (``recurse=False``; and those of any
        submodule other than ``nn.Linear`` / ``nn.LayerNorm``), ``std`` being
        ``config.initializer_range``. The model's ``_init_weights`` calls it once per
        initialisation pass, after transformers has initialised the head's ``nn.Linear`` /
        ``nn.LayerNorm`` submodules (children before parents), and transformers marks the head
        initialised so a later pass skips it. Use ``transformers.initialization`` (or
        ``torch.nn.init``, which transformers guards during the pass): tensors loaded by
        ``from_pretrained`` are skipped. The base head has no parameters."""

    def card_rows(self, config: HeadConfig, parameters: int) -> list[tuple[str, str]]:
        """Model-card design rows specific to this head, as ``(name, value)`` pairs, placed after the
        ``pooling`` row. ``parameters``: the head's own parameter count (the output projection of
        ``output_dim`` is not the head's: the card gives it a row of its own)."""
        return []


@register_pooling_head("last_token")
class LastTokenPooling(PoolingHead):
    """The last real token's state (EOS pooling): the paper's model 1 with causal attention."""

    reads_options = frozenset()

    def forward(self, token_states, attention_mask, layer_states=None):
        return last_token(token_states, attention_mask)


@register_pooling_head("mean")
class MeanPooling(PoolingHead):
    """Mean over real tokens."""

    reads_options = frozenset()

    def forward(self, token_states, attention_mask, layer_states=None):
        return masked_mean(token_states, attention_mask)


@register_pooling_head("weighted_mean")
class WeightedMeanPooling(PoolingHead):
    """Position-weighted mean (SGPT): later tokens, which saw more context causally, weigh more."""

    reads_options = frozenset()

    def forward(self, token_states, attention_mask, layer_states=None):
        return position_weighted_mean(token_states, attention_mask)


class CrossAttention(nn.Module):
    """Multi-head cross-attention, pre-LayerNorm on queries and context, with a context padding mask."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        batch = context.shape[0]
        q = self.to_q(self.norm_queries(queries))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(batch, out.shape[2], -1))


class GEGLUFeedForward(nn.Module):
    """Pre-LayerNorm GEGLU feed-forward (as in the paper's pooling block)."""

    def __init__(self, dim: int, mult: float):
        super().__init__()
        inner = max(1, int(dim * mult))
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class CrossAttentionPoolingHead(PoolingHead):
    """Base of the trainable heads (not registered itself): trainable latents cross-attend to a
    context; GEGLU feed-forward with residual; mean over latents.

    Subclasses choose the context (the last layer's token states for ``latent_attention``, one
    vector per layer for ``multi_layer``) and the baseline: the parameter-free pooling of the same
    input that the head starts from when ``config.pooling_residual`` is set (module docstring).
    """

    reads_options = frozenset(("num_latents", "pooling_attention_heads", "pooling_head_dim", "pooling_ff_mult",
                               "pooling_residual"))

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        dim = config.backbone_hidden_size
        self.residual = config.pooling_residual
        self.latents = nn.Parameter(torch.empty(config.num_latents, dim))
        self.cross_attention = CrossAttention(dim, config.pooling_attention_heads, config.pooling_head_dim)
        self.feed_forward = GEGLUFeedForward(dim, config.pooling_ff_mult)

    def init_weights(self, std: float) -> None:
        super().init_weights(std)
        init.normal_(self.latents, mean=0.0, std=std)
        if self.residual:
            # The last projection of each residual branch starts at zero, so the untrained head returns
            # the baseline exactly. Their gradients are not zero (their inputs are not), so they move
            # on the first step and the rest of the head trains from the second.
            for projection in (self.cross_attention.to_out, self.feed_forward.proj_out):
                init.zeros_(projection.weight)
                if projection.bias is not None:
                    init.zeros_(projection.bias)

    def card_rows(self, config: HeadConfig, parameters: int) -> list[tuple[str, str]]:
        start = "its baseline pooling plus a zero-initialised correction" if config.pooling_residual else \
            "random (the paper's head, pooling_residual=false)"
        return super().card_rows(config, parameters) + [
            ("pooling head", f"{config.num_latents} latents, {config.pooling_attention_heads} heads x "
                             f"{config.pooling_head_dim}, feed-forward x{config.pooling_ff_mult}, "
                             f"{parameters:,} parameters"),
            ("pooling head at initialisation", start),
        ]

    def attend(self, context: torch.Tensor, context_mask: torch.Tensor | None,
               baseline: torch.Tensor | None = None) -> torch.Tensor:
        """Latents cross-attend to ``context`` (B, N, H); ``baseline`` (B, H), when given, is added
        to every latent's attention output before the feed-forward."""
        queries = self.latents.to(context.dtype).unsqueeze(0).expand(context.shape[0], -1, -1)
        x = self.cross_attention(queries, context, context_mask)
        if baseline is not None:
            x = x + baseline.unsqueeze(1)
        x = x + self.feed_forward(x)
        return x.mean(dim=1)


@register_pooling_head("latent_attention")
class LatentAttentionPooling(CrossAttentionPoolingHead):
    """Last-layer trainable pooling (paper's models 2 and 4): latents attend over the last layer's tokens.

    Its baseline (``pooling_residual``) is the last layer reduced by ``layer_reduction``: last
    token with causal attention (design 2 starts as design 1, EOS pooling), mean with bidirectional.
    """

    reads_options = CrossAttentionPoolingHead.reads_options | {"layer_reduction"}
    read_only_with = {"layer_reduction": "pooling_residual"}  # it reduces the last layer for the baseline only

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.reduce = LAYER_REDUCTIONS[config.layer_reduction]

    def forward(self, token_states, attention_mask, layer_states=None):
        baseline = rms_normalize(self.reduce(token_states, attention_mask)) if self.residual else None
        return self.attend(token_states, attention_mask, baseline)


@register_pooling_head("multi_layer")
class MultiLayerPooling(CrossAttentionPoolingHead):
    """Multi-layers trainable pooling (paper's models 3 and 5).

    Each selected layer is reduced to one vector (masked mean or last token, done by the model as
    the layer runs), a trainable per-layer embedding is added, and the latents cross-attend over
    the resulting (B, L, H) stack. No padding exists across layers, so no mask is needed here.

    Its baseline (``pooling_residual``) is the mean over the pooled layers of the RMS-normalised
    per-layer vectors: on SmolLM2 untrained, that scores above the last layer alone, while the
    plain mean is the largest layers' vector and scores below it (docs/results.md, layer probe).
    """

    needs_layer_states = True
    reads_options = CrossAttentionPoolingHead.reads_options | {"layer_reduction", "pooling_layers"}

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.layer_embedding = nn.Parameter(
            torch.empty(len(config.resolved_pooling_layers), config.backbone_hidden_size))

    def init_weights(self, std: float) -> None:
        super().init_weights(std)  # the latents first, as before: same draws for a given seed
        init.normal_(self.layer_embedding, mean=0.0, std=std)

    def card_rows(self, config: HeadConfig, parameters: int) -> list[tuple[str, str]]:
        layers = "all" if config.pooling_layers is None else ", ".join(map(str, config.pooling_layers))
        return super().card_rows(config, parameters) + [
            ("pooled layers", f"{layers} (per-layer {config.layer_reduction})"),
        ]

    def forward(self, token_states, attention_mask, layer_states=None):
        if layer_states is None:
            raise ValueError("multi_layer pooling needs layer_states (B, L, H); "
                             "the model collects them during forward")
        baseline = rms_normalize(layer_states).mean(dim=1) if self.residual else None
        return self.attend(layer_states + self.layer_embedding.to(layer_states.dtype), None, baseline)


__all__ = [
    "LAYER_REDUCTIONS", "POOLING_HEADS", "LastTokenReduction", "LayerReduction", "MeanReduction",
    "CrossAttentionPoolingHead", "LastTokenPooling", "LatentAttentionPooling",
    "MeanPooling", "MultiLayerPooling", "PoolingHead", "WeightedMeanPooling", "last_token", "masked_mean",
    "position_weighted_mean", "register_pooling_head", "rms_normalize",
]
