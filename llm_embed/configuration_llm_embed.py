"""LLMEmbeddingConfig: one decoder backbone config, nested, plus every design choice of the embedder.

The design space of Tang & Yang (2024) is two plain values, ``attention`` and ``pooling``; the
pooling head's sizes, the prompts, the maximum length and the normalisation sit beside them. All
values are checked when the config is built, so a bad design fails at once with a message that
names the bad value and the valid ones, not later inside a forward pass.
"""

from __future__ import annotations

import difflib
import inspect

from transformers import AutoConfig, PreTrainedConfig

from .bidirectional import check_bidirectional_support, check_decoder
from .pooling import LAYER_REDUCTIONS, POOLING_HEADS

ATTENTION_MODES = ("causal", "bidirectional")
PADDING_SIDES = ("left", "right")

# E5-Mistral style instruction, as used for the paper's training data; documents get none.
DEFAULT_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ",
    "document": "",
}


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _optional_positive_int(name: str, value) -> None:
    if value is not None:
        _positive_int(name, value)


def _positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _non_negative_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _boolean(name: str, value) -> None:
    # A hand-edited config.json with "normalize": "false" holds a non-empty string, which Python
    # treats as true: refuse anything but a real boolean.
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} must be true or false (a bool), got {value!r} ({type(value).__name__}); in config.json write "
            f"{name}: true or false without quotes"
        )


def _one_of(choices_of):
    def check(name: str, value) -> None:
        choices = tuple(choices_of())
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    return check


def _pooling_layers(name: str, value) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{name} must be a list of layer numbers (1..L, or negative from the end), got {value!r} "
            f"({type(value).__name__}); for one layer write [{value!r}], for all layers leave it None"
        )
    if not value:
        raise ValueError(f"{name} must name at least one layer, or be None for all layers")
    bad = [layer for layer in value if isinstance(layer, bool) or not isinstance(layer, int) or layer == 0]
    if bad:
        raise ValueError(f"{name} {bad} are out of range: layers are numbered 1..L or -1..-L (integers, no 0)")


def _prompts(name: str, value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(
            f"{name} must be a dict of name -> prefix string (\"\" for no prefix), got {value!r}"
        )


def _optional_string(name: str, value) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None, got {value!r} ({type(value).__name__})")


# Type and range of every option, checked whenever a value enters: the constructor (so also
# from_pretrained and a hand-edited config.json) and attribute assignment (config.max_seq_length = 0).
# Checks that relate two options (default_prompt_name in prompts, max_seq_length within the
# backbone's positions, pooling_layers within its depth) are in validate_design.
OPTION_CHECKS = {
    "attention": _one_of(lambda: ATTENTION_MODES),
    "pooling": _one_of(lambda: POOLING_HEADS),
    "layer_reduction": _one_of(lambda: LAYER_REDUCTIONS),
    "pooling_layers": _pooling_layers,
    "num_latents": _positive_int,
    "pooling_heads": _positive_int,
    "pooling_head_dim": _positive_int,
    "pooling_ff_mult": _positive_number,
    "output_dim": _optional_positive_int,
    "normalize": _boolean,
    "prompts": _prompts,
    "default_prompt_name": _optional_string,
    "max_seq_length": _positive_int,
    "append_eos": _boolean,
    "padding_side": _one_of(lambda: PADDING_SIDES),
    "initializer_range": _non_negative_number,
    "loss_temperature": _positive_number,
    "loss_symmetric": _boolean,
    "loss_gather_across_ranks": _boolean,
    "loss_mini_batch_size": _optional_positive_int,
}


def build_backbone_config(backbone_config) -> PreTrainedConfig:
    """The nested backbone config as a config object (restored from its ``model_type`` when a dict)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if backbone_config is None:
        return CONFIG_MAPPING["llama"]()  # a placeholder: LLMEmbeddingConfig() must construct (transformers
        # builds one to diff against); a model refuses to be built on it (see check_backbone_given)
    if isinstance(backbone_config, PreTrainedConfig):
        return backbone_config
    if isinstance(backbone_config, dict):
        model_type = backbone_config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"backbone_config must carry a model_type that transformers knows, got {model_type!r}; "
                "pass e.g. AutoConfig.from_pretrained(path) or a dict from config.to_dict()."
            )
        fields = {key: value for key, value in backbone_config.items() if key != "model_type"}
        return CONFIG_MAPPING[model_type](**fields)
    raise TypeError(f"backbone_config must be a dict or a PreTrainedConfig, got {type(backbone_config).__name__}")


def check_for_misspelled_options(extra_kwargs: dict) -> None:
    """transformers configs keep unknown keyword arguments as attributes (for old checkpoints); a
    near-miss of one of our options (``num_latent=8``) would then be ignored without a word."""
    for key in extra_kwargs:
        close = difflib.get_close_matches(key, LLM_EMBEDDING_OPTIONS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"LLMEmbeddingConfig got an unknown option {key!r}; did you mean {close[0]!r}?")


class LLMEmbeddingConfig(PreTrainedConfig):
    r"""
    Configuration of an [`LLMEmbeddingModel`]: a decoder backbone turned into a text embedder.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`):
            Config of the decoder backbone (any model_type transformers ships: llama, mistral, qwen2, ...).
            Stored nested with its `model_type` and restored through `AutoConfig`.
        attention (`str`, defaults to `"bidirectional"`): `"causal"` keeps the backbone as trained;
            `"bidirectional"` lets every token attend to every other (padding excluded).
        pooling (`str`, defaults to `"multi_layer"`): a name in `POOLING_HEADS`: `last_token`, `mean`,
            `weighted_mean`, `latent_attention` (last-layer trainable pooling) or `multi_layer`
            (multi-layers trainable pooling).
        layer_reduction (`str`, *optional*): how `multi_layer` reduces each layer's tokens, `"mean"` or
            `"last_token"`. Defaults to the paper's choice: mean with bidirectional attention, last token
            with causal attention.
        pooling_layers (`list[int]`, *optional*): layers `multi_layer` pools, numbered 1..L like
            `hidden_states[1:]` (negative numbers count from the end). Defaults to all layers.
        num_latents (`int`, defaults to 16): trainable latent queries of the trainable heads.
        pooling_heads (`int`, defaults to 8), pooling_head_dim (`int`, defaults to 64): cross-attention shape.
        pooling_ff_mult (`float`, defaults to 1.0): feed-forward width as a multiple of the hidden size.
        output_dim (`int`, *optional*): add a linear projection to this many dimensions.
        normalize (`bool`, defaults to `True`): L2-normalise embeddings (cosine = dot product).
        prompts (`dict[str, str]`): named instruction prefixes; `query` and `document` by default.
        default_prompt_name (`str`, *optional*): prompt used by `encode` when none is given.
        max_seq_length (`int`, defaults to 512): token budget of one text, EOS included.
        append_eos (`bool`, defaults to `True`): append the EOS token to every text (the paper does; the
            `last_token` head then pools the EOS state).
        padding_side (`str`, defaults to `"right"`): padding side `encode` uses; results do not depend on it.
        initializer_range (`float`, defaults to 0.02): std of the pooling head's initial weights.
        loss_temperature (`float`, defaults to 0.05): InfoNCE temperature of the training loss (paper: 0.05).
        loss_symmetric (`bool`, defaults to `False`): add the positive -> queries InfoNCE term.
        loss_gather_across_ranks (`bool`, defaults to `True`): under distributed training, every rank's
            positives and negatives are candidates for every query.
        loss_mini_batch_size (`int`, *optional*): with a value, the loss is computed with GradCache:
            texts are embedded this many at a time, so the contrastive batch is not bounded by memory.
    """

    model_type = "llm_embedding"
    sub_configs = {"backbone_config": AutoConfig}

    # An explicit __init__ (not dataclass fields) so that one file works on every transformers >= 5.2:
    # configs became dataclasses in later 5.x releases, which still accept a custom __init__.
    def __init__(
        self,
        backbone_config: dict | PreTrainedConfig | None = None,
        attention: str = "bidirectional",
        pooling: str = "multi_layer",
        layer_reduction: str | None = None,
        pooling_layers: list[int] | None = None,
        num_latents: int = 16,
        pooling_heads: int = 8,
        pooling_head_dim: int = 64,
        pooling_ff_mult: float = 1.0,
        output_dim: int | None = None,
        normalize: bool = True,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        max_seq_length: int = 512,
        append_eos: bool = True,
        padding_side: str = "right",
        initializer_range: float = 0.02,
        loss_temperature: float = 0.05,
        loss_symmetric: bool = False,
        loss_gather_across_ranks: bool = True,
        loss_mini_batch_size: int | None = None,
        **kwargs,
    ):
        check_for_misspelled_options(kwargs)
        if isinstance(pooling_layers, tuple):
            pooling_layers = list(pooling_layers)
        self._backbone_config_missing = backbone_config is None
        self.backbone_config = build_backbone_config(backbone_config)
        self.attention = attention
        self.pooling = pooling
        self.layer_reduction = layer_reduction or ("mean" if attention == "bidirectional" else "last_token")
        self.pooling_layers = pooling_layers
        self.num_latents = num_latents
        self.pooling_heads = pooling_heads
        self.pooling_head_dim = pooling_head_dim
        self.pooling_ff_mult = pooling_ff_mult
        self.output_dim = output_dim
        self.normalize = normalize
        self.prompts = dict(DEFAULT_PROMPTS) if prompts is None else prompts
        self.default_prompt_name = default_prompt_name
        self.max_seq_length = max_seq_length
        self.append_eos = append_eos
        self.padding_side = padding_side
        self.initializer_range = initializer_range
        self.loss_temperature = loss_temperature
        self.loss_symmetric = loss_symmetric
        self.loss_gather_across_ranks = loss_gather_across_ranks
        self.loss_mini_batch_size = loss_mini_batch_size
        super().__init__(**kwargs)
        self.validate_design()

    def __setattr__(self, name: str, value) -> None:
        check = OPTION_CHECKS.get(name)
        if check is not None:
            check(name, value)
        super().__setattr__(name, value)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_backbone_config_missing", None)
        return output

    def check_backbone_given(self) -> None:
        """Refuse to build a model on the placeholder backbone config of a config that had none (a
        truncated or hand-written config.json): that would silently allocate a default Llama-7B."""
        if self.__dict__.get("_backbone_config_missing", False):
            raise ValueError(
                "this LLMEmbeddingConfig has no backbone_config, so there is no backbone to build (a default would "
                "be a randomly initialised Llama-7B). Its config.json is incomplete: save the model again, or "
                "pass backbone_config=AutoConfig.from_pretrained(<decoder>) or use LLMEmbeddingModel.from_backbone."
            )

    # ------------------------------------------------------------------ derived values

    @property
    def backbone_hidden_size(self) -> int:
        return self.backbone_config.hidden_size

    @property
    def backbone_num_layers(self) -> int:
        return self.backbone_config.num_hidden_layers

    @property
    def embedding_dim(self) -> int:
        """Size of the vectors the model returns."""
        return self.output_dim or self.backbone_hidden_size

    @property
    def resolved_pooling_layers(self) -> list[int]:
        """Layers (1..L) multi-layer pooling reads, negatives resolved, in order."""
        num_layers = self.backbone_num_layers
        if self.pooling_layers is None:
            return list(range(1, num_layers + 1))
        return [layer if layer > 0 else num_layers + 1 + layer for layer in self.pooling_layers]

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The backbone's config: what transformers' utilities (device maps, DeepSpeed sizes, peft) need."""
        return self.backbone_config.get_text_config(decoder=decoder, encoder=encoder)

    # ------------------------------------------------------------------ validation

    def validate_design(self) -> None:
        """Every option's type and range, then the checks that relate options to each other and to
        the backbone. Runs when the config is built and again when a model is built from it."""
        for name, check in OPTION_CHECKS.items():
            check(name, getattr(self, name))
        check_decoder(self.backbone_config)
        for name in ("hidden_size", "num_hidden_layers"):
            if not isinstance(getattr(self.backbone_config, name, None), int):
                raise ValueError(
                    f"backbone_config ({self.backbone_config.model_type}) has no integer {name}; "
                    "llm_embed needs a decoder config with hidden_size and num_hidden_layers."
                )
        num_layers = self.backbone_num_layers
        if self.pooling_layers is not None:
            bad = [layer for layer in self.pooling_layers if abs(layer) > num_layers]
            if bad:
                raise ValueError(
                    f"pooling_layers {bad} are out of range: valid layers are 1..{num_layers} or -1..-{num_layers}"
                )
            resolved = self.resolved_pooling_layers
            if len(set(resolved)) != len(resolved):
                raise ValueError(f"pooling_layers {self.pooling_layers} name a layer twice")
        max_positions = getattr(self.backbone_config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and self.max_seq_length > max_positions:
            raise ValueError(
                f"max_seq_length={self.max_seq_length} exceeds the backbone's max_position_embeddings={max_positions}"
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name={self.default_prompt_name!r} is not in prompts {sorted(self.prompts)}"
            )
        if self.attention == "bidirectional":
            check_bidirectional_support(self.backbone_config)


LLM_EMBEDDING_OPTIONS = tuple(inspect.signature(LLMEmbeddingConfig.__init__).parameters)[1:-1]

__all__ = ["LLMEmbeddingConfig"]
