"""LLMEmbeddingConfig: one decoder backbone config, nested, plus every design choice of the embedder.

The design space of Tang & Yang (2024) is two plain values, ``attention`` and ``pooling``; the
pooling head's sizes, the prompts, the maximum length and the normalisation sit beside them. All
values are checked when the config is built, so a bad design fails at once with a message that
names the bad value and the valid ones, not later inside a forward pass.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.utils import logging

from .bidirectional import check_bidirectional_support, check_causal_support, check_decoder
from .model_card import looks_like_hub_id
from .pooling import LAYER_REDUCTIONS, POOLING_HEADS

logger = logging.get_logger(__name__)

ATTENTION_MODES = ("causal", "bidirectional")
DEFAULT_MAX_SEQ_LENGTH = 512
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


@dataclass(frozen=True)
class ConfigOption:
    """One design option of :class:`LLMEmbeddingConfig`: the single place that gives its type, default,
    help and check. The config's docstring, its validation, and every command-line surface
    (``llm-embed-train``, ``llm-embed-study``) are derived from :data:`OPTIONS`, so a new option appears
    everywhere at once.

    ``kind`` is how a command line spells the value: ``int``, ``float``, ``bool``, ``str``,
    ``int_list`` (several integers) or ``json`` (a JSON object, for ``prompts``). ``default=None``
    with ``default_help`` means the default is derived (stated in ``default_help``)."""

    name: str
    kind: str
    default: Any
    help: str
    check: Callable[[str, Any], None]
    choices: Callable[[], tuple] | None = None
    default_help: str | None = None
    group: str = "design"  # "design" (what the model computes) or "training" (the loss)

    def describe_default(self) -> str:
        if self.default_help is not None:
            return self.default_help
        return json.dumps(self.default) if isinstance(self.default, (dict, bool)) else str(self.default)


OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption("attention", "str", "bidirectional",
                 '"causal" keeps the backbone as trained; "bidirectional" lets every token attend to every other '
                 "(padding excluded)", _one_of(lambda: ATTENTION_MODES), choices=lambda: ATTENTION_MODES),
    ConfigOption("pooling", "str", "multi_layer",
                 "the pooling head, a name in POOLING_HEADS: last_token, mean, weighted_mean, latent_attention "
                 "(last-layer trainable pooling) or multi_layer (multi-layers trainable pooling)",
                 _one_of(lambda: POOLING_HEADS), choices=lambda: tuple(POOLING_HEADS)),
    ConfigOption("layer_reduction", "str", None,
                 "how multi_layer reduces each layer's tokens to one vector: mean or last_token",
                 _one_of(lambda: LAYER_REDUCTIONS), choices=lambda: tuple(LAYER_REDUCTIONS),
                 default_help="mean with bidirectional attention, last_token with causal (the paper's choice)"),
    ConfigOption("pooling_layers", "int_list", None,
                 "layers multi_layer pools, numbered 1..L like hidden_states[1:] "
                 "(negative numbers count from the end)",
                 _pooling_layers, default_help="all layers"),
    ConfigOption("num_latents", "int", 16, "trainable latent queries of the trainable heads", _positive_int),
    ConfigOption("pooling_attention_heads", "int", 8,
                 "attention heads of the trainable heads' cross-attention (config key pooling_heads before 0.2)",
                 _positive_int),
    ConfigOption("pooling_head_dim", "int", 64, "width of each cross-attention head", _positive_int),
    ConfigOption("pooling_ff_mult", "float", 1.0, "feed-forward width of the trainable heads, as a multiple of the "
                 "hidden size", _positive_number),
    ConfigOption("pooling_residual", "bool", False,
                 "the trainable heads start at their baseline pooling: they add a zero-initialised correction to the "
                 "last layer's layer_reduction (latent_attention) or the mean of the RMS-normalised per-layer "
                 "reductions (multi_layer). False (the paper's head, a random projection until trained) trained "
                 "better in our CPU runs at the default head rate (docs/results.md)", _boolean),
    ConfigOption("output_dim", "int", None, "add a linear projection to this many dimensions",
                 _optional_positive_int, default_help="no projection: the backbone's hidden size"),
    ConfigOption("normalize", "bool", True, "L2-normalise embeddings (cosine similarity = dot product)", _boolean),
    ConfigOption("prompts", "json", None, "named instruction prefixes, a JSON object of name -> prefix",
                 _prompts, default_help="an E5-Mistral query instruction for 'query', '' for 'document'"),
    ConfigOption("default_prompt_name", "str", None, "prompt encode() uses when none is given",
                 _optional_string, default_help="no prompt"),
    ConfigOption("max_seq_length", "int", None, "token budget of one text, EOS included", _positive_int,
                 default_help=f"{DEFAULT_MAX_SEQ_LENGTH}, or the backbone's max_position_embeddings if smaller"),
    ConfigOption("append_eos", "bool", True, "append the EOS token to every text (the paper does; last_token "
                 "pooling then pools the EOS state)", _boolean),
    ConfigOption("padding_side", "str", "right", "padding side encode() uses; results do not depend on it",
                 _one_of(lambda: PADDING_SIDES), choices=lambda: PADDING_SIDES),
    ConfigOption("initializer_range", "float", 0.02, "std of the pooling head's initial weights",
                 _non_negative_number),
    ConfigOption("loss_temperature", "float", 0.05, "InfoNCE temperature of the training loss (paper: 0.05)",
                 _positive_number, group="training"),
    ConfigOption("loss_symmetric", "bool", False, "add the positive -> queries InfoNCE term", _boolean,
                 group="training"),
    ConfigOption("loss_mask_duplicates", "bool", False, "leave out of a query's negatives the candidates holding "
                 "its positive's text, and the positives of rows asking the same query (repeated texts in a batch)",
                 _boolean, group="training"),
    ConfigOption("loss_gather_across_ranks", "bool", True, "under distributed training, every rank's positives "
                 "and negatives are candidates for every query", _boolean, group="training"),
    ConfigOption("loss_mini_batch_size", "int", None, "compute the loss with GradCache, embedding this many texts "
                 "at a time, so that the contrastive batch is not bounded by memory", _optional_positive_int,
                 default_help="no GradCache", group="training"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
# The options a model reads once, when it is built (its head, projection and attention set-up): edited
# on a built model they change nothing it computes, only what a save would describe.
BUILD_OPTIONS = ("attention", "pooling", "layer_reduction", "pooling_layers", "num_latents",
                 "pooling_attention_heads", "pooling_head_dim", "pooling_ff_mult", "pooling_residual", "output_dim")
# The options only some pooling heads read (each head's ``reads_options`` says which it reads).
HEAD_OPTIONS = ("layer_reduction", "pooling_layers", "num_latents", "pooling_attention_heads", "pooling_head_dim",
                "pooling_ff_mult", "pooling_residual")


def head_reads(head, name: str, values: dict) -> bool:
    """Whether pooling head class ``head`` reads head option ``name`` in a config of ``values`` (options
    not in ``values`` at their defaults): it is one of its ``reads_options``, and the boolean option
    its ``read_only_with`` names for it, if any, is true."""
    switch = head.read_only_with.get(name)
    return name in head.reads_options and (switch is None or bool(values.get(switch, OPTIONS_BY_NAME[switch].default)))


def head_options_problem(given: dict, *, flag: Callable[[str], str] = str) -> str | None:
    """What is wrong with the head options in ``given`` for the chosen pooling head, or None: an option
    the head does not read (``pooling="mean", pooling_layers=[-4, -1]`` would otherwise build, train
    and save a mean-pooling model of the last layer with the layers stored and unused, unlike what was
    asked for). ``given`` holds what the user set (keyword arguments, a command line); ``flag`` spells
    an option name the way they wrote it. A head registered from user code without ``reads_options``
    is not checked."""
    pooling = given.get("pooling", OPTIONS_BY_NAME["pooling"].default)
    head = POOLING_HEADS.get(pooling)
    if head is None or head.reads_options is None:
        return None  # an unknown head is named by the option check
    unused = [name for name in HEAD_OPTIONS if name in given and name not in head.reads_options]
    if unused:
        flags = " ".join(flag(name) for name in unused)
        readers = sorted({name for name, other in POOLING_HEADS.items()
                          if other.reads_options is not None and set(unused) & other.reads_options})
        users = [name for name in readers if set(unused) <= POOLING_HEADS[name].reads_options]
        instead = f", or choose {flag('pooling')} {users[-1]}" if users else ""
        return (f"{flags}: not used by the {pooling} pooling head (only by {' / '.join(readers)}); drop "
                f"{'it' if len(unused) == 1 else 'them'}{instead}")
    for name, switch in head.read_only_with.items():
        if name in given and not head_reads(head, name, given):
            return (f"{flag(name)}: the {pooling} pooling head reads it only with {flag(switch)} true; drop it, or "
                    f"add {flag(switch)} true")
    return None


def options_for_head(pooling: str, options: dict) -> dict:
    """``options`` less the head options the ``pooling`` head does not read (:func:`head_options_problem`'s
    rule): for one set of options that serves several designs (``llm-embed-study``), where
    ``--num_latents`` is meant for the trainable heads and says nothing about last-token pooling."""
    head = POOLING_HEADS.get(pooling)
    if head is None or head.reads_options is None:
        return dict(options)
    return {name: value for name, value in options.items()
            if name not in HEAD_OPTIONS or head_reads(head, name, options)}


def check_head_options(given: dict, *, flag: Callable[[str], str] = str) -> None:
    """Refuse head options the chosen pooling head does not read (:func:`head_options_problem`)."""
    problem = head_options_problem(given, flag=flag)
    if problem is not None:
        raise ValueError(problem)


# A saved config is being loaded (from_dict): head options its head never read were saved by an older
# release, which accepted them; the checkpoint computes the same without them, so it loads with a warning.
_LOADING_SAVED_CONFIG: ContextVar[bool] = ContextVar("llm_embed_loading_saved_config", default=False)


# Config keys that older checkpoints use, and the option each one now is.
RENAMED_OPTIONS = {"pooling_heads": "pooling_attention_heads"}
# Options added after checkpoints were saved without them, and the value that reproduces what
# those checkpoints compute. A config.json without the key loads with this value, not the default;
# so that a new save never lacks it, these keys are always written (transformers' diff-based
# serialisation would otherwise leave out a value equal to the default).
ABSENT_OPTION_VALUES = {"pooling_residual": False}


def options_docstring() -> str:
    """The ``Args`` section of :class:`LLMEmbeddingConfig`'s docstring, from :data:`OPTIONS`."""
    lines = []
    for option in OPTIONS:
        lines.append(f"        {option.name} (`{option.kind}`, defaults to {option.describe_default()}): "
                     f"{option.help}.")
    return "\n".join(lines)


def is_gguf_load_record(quantization_config) -> bool:
    """Whether a backbone config's ``quantization_config`` only records that its weights were read from a
    GGUF file. The embedding model holds (and saves) them as plain floats, so the record is dropped from
    its ``backbone_config``: kept, transformers would flag every reload as quantized with GGUF, which
    refuses ``save_pretrained``, ``.half()`` and training (checkpoints built on the bundled SmolLM2 could
    not be saved again)."""
    if quantization_config is None:
        return False
    method = (quantization_config.get("quant_method") if isinstance(quantization_config, dict)
              else getattr(quantization_config, "quant_method", None))
    return str(getattr(method, "value", method)) == "gguf"


def build_backbone_config(backbone_config) -> PreTrainedConfig:
    """The nested backbone config as a config object (restored from its ``model_type`` when a dict)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if backbone_config is None:
        return CONFIG_MAPPING["llama"]()  # a placeholder: LLMEmbeddingConfig() must construct (transformers
        # builds one to diff against); a model refuses to be built on it (see check_backbone_given)
    if isinstance(backbone_config, PreTrainedConfig):
        if is_gguf_load_record(getattr(backbone_config, "quantization_config", None)):
            backbone_config = copy.deepcopy(backbone_config)  # the caller's object is left as it is
            del backbone_config.quantization_config
        return backbone_config
    if isinstance(backbone_config, dict):
        model_type = backbone_config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"backbone_config must carry a model_type that transformers knows, got {model_type!r}; "
                "pass e.g. AutoConfig.from_pretrained(path) or a dict from config.to_dict()."
            )
        fields = {key: value for key, value in backbone_config.items() if key != "model_type"
                  and not (key == "quantization_config" and is_gguf_load_record(value))}
        return CONFIG_MAPPING[model_type](**fields)
    raise TypeError(f"backbone_config must be a dict or a PreTrainedConfig, got {type(backbone_config).__name__}")


def unknown_arguments(names, known=None, cutoff: float = 0.8) -> str:
    """``num_latent (did you mean 'num_latents'?)`` for each name, with the closest of ``known``
    (default: the config options)."""
    known = LLM_EMBEDDING_OPTIONS if known is None else known

    def named(name: str) -> str:
        close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
        return f"{name} (did you mean {close[0]!r}?)" if close else name

    return ", ".join(named(name) for name in names)


#: Names other embedding libraries give our options, for the refusal of an unknown one.
OTHER_LIBRARY_NAMES = {
    "normalize_embeddings": "normalize",
    "max_length": "max_seq_length",
    "max_len": "max_seq_length",
    "model_max_length": "max_seq_length",
    "pooling_mode": "pooling",
    "embedding_dim": "output_dim",
    "temperature": "loss_temperature",
    "truncate_dim": "output_dim (a trained projection; to cut vectors, slice embeddings[..., :dim] and "
                    "L2-normalise them again)",
    "query_prompt": "prompts={'query': ...}",
    "document_prompt": "prompts={'document': ...}",
    "default_prompt": "default_prompt_name",
}

#: What transformers' PreTrainedConfig itself takes or writes, beyond its fields (read from the running
#: version in :func:`transformers_config_arguments`): popped or renamed by its ``__init__``.
TRANSFORMERS_CONFIG_EXTRAS = frozenset({
    "model_type", "transformers_version", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash",
    "attn_implementation", "_attn_implementation", "_attn_implementation_internal", "experts_implementation",
    "_experts_implementation", "_experts_implementation_internal", "output_attentions", "num_labels", "auto_map",
    "per_layer_config", "custom_pipelines",
})


@functools.cache
def transformers_config_arguments() -> frozenset:
    """The keyword arguments a plain ``PreTrainedConfig`` of the installed transformers takes (read
    once: it builds a config)."""
    base = PreTrainedConfig()
    names = set(inspect.signature(PreTrainedConfig.__init__).parameters) | set(base.__dict__) | set(base.to_dict())
    return frozenset(names | TRANSFORMERS_CONFIG_EXTRAS)


def check_for_misspelled_options(extra_kwargs: dict) -> None:
    """transformers configs keep unknown keyword arguments as attributes (for old checkpoints), so an
    option under another name (``num_latent=8``, sentence-transformers' ``normalize_embeddings=False``)
    would be stored and ignored: the model computes without it. A config being built is refused any
    key that is neither an option nor transformers'; a saved config being loaded (maybe written by a
    newer transformers, or edited) only a near-miss of an option."""
    for key in extra_kwargs:
        close = difflib.get_close_matches(key, LLM_EMBEDDING_OPTIONS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"LLMEmbeddingConfig got an unknown option {key!r}; did you mean {close[0]!r}?")
    if _LOADING_SAVED_CONFIG.get():
        return
    unknown = [key for key in extra_kwargs if key not in transformers_config_arguments()]
    if unknown:
        named = [f"{key} (did you mean {OTHER_LIBRARY_NAMES[key]}?)" if key in OTHER_LIBRARY_NAMES else key
                 for key in unknown]
        raise ValueError(
            f"LLMEmbeddingConfig got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(named)}: neither an "
            f"llm_embed option nor a transformers config argument, so the model would compute without it. The "
            f"options are {', '.join(LLM_EMBEDDING_OPTIONS)} (docs/usage.md); set other attributes after building "
            "the config (config.name = value) if you need them."
        )


class LLMEmbeddingConfig(PreTrainedConfig):
    r"""
    Configuration of an [`LLMEmbeddingModel`]: a decoder backbone turned into a text embedder.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`):
            Config of the decoder backbone (any decoder model_type transformers ships: llama, mistral, qwen2, ...).
            Stored nested with its `model_type` and restored through `AutoConfig`.
    """

    model_type = "llm_embedding"
    sub_configs = {"backbone_config": AutoConfig}
    attribute_map = dict(RENAMED_OPTIONS)  # config.pooling_heads still reads and writes the renamed option

    # An explicit __init__ (not dataclass fields) so that one file works on every transformers >= 5.2:
    # configs became dataclasses in later 5.x releases, which still accept a custom __init__. Its
    # parameters and defaults must match OPTIONS (tested).
    def __init__(
        self,
        backbone_config: dict | PreTrainedConfig | None = None,
        attention: str = "bidirectional",
        pooling: str = "multi_layer",
        layer_reduction: str | None = None,
        pooling_layers: list[int] | None = None,
        num_latents: int = 16,
        pooling_attention_heads: int = 8,
        pooling_head_dim: int = 64,
        pooling_ff_mult: float = 1.0,
        pooling_residual: bool = False,
        output_dim: int | None = None,
        normalize: bool = True,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        max_seq_length: int | None = None,
        append_eos: bool = True,
        padding_side: str = "right",
        initializer_range: float = 0.02,
        loss_temperature: float = 0.05,
        loss_symmetric: bool = False,
        loss_mask_duplicates: bool = False,
        loss_gather_across_ranks: bool = True,
        loss_mini_batch_size: int | None = None,
        **kwargs,
    ):
        if "pooling_heads" in kwargs:  # the name before 0.2 (RENAMED_OPTIONS)
            legacy = kwargs.pop("pooling_heads")
            OPTIONS_BY_NAME["pooling_attention_heads"].check("pooling_heads", legacy)  # errors name what was given
            if pooling_attention_heads not in (OPTIONS_BY_NAME["pooling_attention_heads"].default, legacy):
                raise ValueError(
                    f"got pooling_heads={legacy!r} and pooling_attention_heads={pooling_attention_heads!r}; they are "
                    "the same option (pooling_heads is its old name): pass only pooling_attention_heads"
                )
            pooling_attention_heads = legacy
        check_for_misspelled_options(kwargs)
        if isinstance(pooling_layers, tuple):
            pooling_layers = list(pooling_layers)
        self._backbone_config_missing = backbone_config is None
        self.backbone_config = build_backbone_config(backbone_config)
        if max_seq_length is None:
            # Not given: the usual 512, or less for a backbone with fewer positions. An explicit value
            # beyond the backbone's positions is refused by validate_design.
            max_positions = getattr(self.backbone_config, "max_position_embeddings", None)
            max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, max_positions) if isinstance(max_positions, int) and \
                max_positions > 0 else DEFAULT_MAX_SEQ_LENGTH
        self.attention = attention
        self.pooling = pooling
        self.layer_reduction = layer_reduction or ("mean" if attention == "bidirectional" else "last_token")
        self.pooling_layers = pooling_layers
        self.num_latents = num_latents
        self.pooling_attention_heads = pooling_attention_heads
        self.pooling_head_dim = pooling_head_dim
        self.pooling_ff_mult = pooling_ff_mult
        self.pooling_residual = pooling_residual
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
        self.loss_mask_duplicates = loss_mask_duplicates
        self.loss_gather_across_ranks = loss_gather_across_ranks
        self.loss_mini_batch_size = loss_mini_batch_size
        super().__init__(**kwargs)
        self._check_head_options(derived_layer_reduction=layer_reduction is None)
        self.validate_design()

    def _check_head_options(self, derived_layer_reduction: bool) -> None:
        """Refuse head options set to a value of their own that the chosen head does not read (the config
        cannot tell an explicit default from no value, so those pass). A saved config is only warned about."""
        given = {"pooling": self.pooling}
        for name in HEAD_OPTIONS:
            default = OPTIONS_BY_NAME[name].default
            if name == "layer_reduction":  # its default derives from the attention mode
                default = self.layer_reduction if derived_layer_reduction else \
                    ("mean" if self.attention == "bidirectional" else "last_token")
            if getattr(self, name) != default:
                given[name] = getattr(self, name)
        problem = head_options_problem(given)
        if problem is None:
            return
        if not _LOADING_SAVED_CONFIG.get():
            raise ValueError(problem)
        logger.warning(f"this saved config sets head options its {self.pooling} pooling head does not read; the "
                       f"checkpoint computes without them, as it did when it was saved ({problem})")

    def __setattr__(self, name: str, value) -> None:
        option = OPTIONS_BY_NAME.get(RENAMED_OPTIONS.get(name, name))
        if option is not None and option.name == "pooling_layers" and isinstance(value, tuple):
            value = list(value)  # as the constructor stores it (and as the built model compares it)
        if option is not None:
            option.check(name, value)  # the error names the option as the caller spelled it
            if "backbone_config" in self.__dict__:
                self._check_against_backbone(option.name, value)
        super().__setattr__(name, value)

    def _check_against_backbone(self, name: str, value) -> None:
        """The checks of one option against the backbone, at assignment (``config.max_seq_length =
        4096`` on a 1024-position GPT-2 would otherwise embed with a raw ``IndexError``, or past a RoPE
        model's trained positions without a word, and save a config that does not load)."""
        if name == "max_seq_length" and value is not None:
            max_positions = getattr(self.backbone_config, "max_position_embeddings", None)
            if isinstance(max_positions, int) and value > max_positions:
                raise ValueError(
                    f"max_seq_length={value} exceeds the backbone's max_position_embeddings={max_positions}"
                )
        if name == "pooling_layers" and value is not None:
            num_layers = getattr(self.backbone_config, "num_hidden_layers", None)
            bad = [layer for layer in value if isinstance(num_layers, int) and abs(layer) > num_layers]
            if bad:
                raise ValueError(
                    f"pooling_layers {bad} are out of range: valid layers are 1..{num_layers} or -1..-{num_layers}"
                )

    def to_dict(self) -> dict:
        """transformers' serialisation, less what describes the machine rather than the model: the
        unsaved placeholder flag, and local paths the model or its backbone were loaded from (a Hub
        id is kept; it names the base model)."""
        output = super().to_dict()
        output.pop("_backbone_config_missing", None)
        for section in (output, output.get("backbone_config") or {}):
            if not looks_like_hub_id(section.get("_name_or_path")):
                section.pop("_name_or_path", None)
        return output

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' loading path (``from_pretrained``, also under ``trust_remote_code``): a saved
        config without an option of :data:`ABSENT_OPTION_VALUES` gets the value that reproduces the
        checkpoint, not today's default."""
        missing = {key: value for key, value in ABSENT_OPTION_VALUES.items()
                   if key not in config_dict and key not in kwargs}
        loading = _LOADING_SAVED_CONFIG.set(True)
        try:
            return super().from_dict({**config_dict, **missing}, **kwargs)
        finally:
            _LOADING_SAVED_CONFIG.reset(loading)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, after :meth:`validate_design`: ``prompts`` and ``backbone_config`` can be
        edited in place after the config checked them (a default prompt popped, a prompt that is not a
        string, fewer backbone positions than ``max_seq_length``), and the saved config would then fail
        to load."""
        self.validate_design()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def to_diff_dict(self) -> dict:
        """What ``save_pretrained`` writes: transformers' values that differ from the defaults, plus
        every option of :data:`ABSENT_OPTION_VALUES` (see there)."""
        output = super().to_diff_dict()
        full = self.to_dict()
        output.update({key: full[key] for key in ABSENT_OPTION_VALUES})
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
    def hidden_size(self) -> int:
        """The backbone's hidden size, under the name tools read from ``model.config`` (DeepSpeed's
        "auto" ZeRO bucket sizes through the Trainer); the size of the vectors is :attr:`embedding_dim`."""
        return self.backbone_hidden_size

    @hidden_size.setter
    def hidden_size(self, value) -> None:
        raise AttributeError(
            f"hidden_size is the backbone's (backbone_config.hidden_size) and cannot be set to {value!r} here; "
            "set output_dim for the size of the embeddings."
        )

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
        for option in OPTIONS:
            option.check(option.name, getattr(self, option.name))
        check_decoder(self.backbone_config)
        for name in ("hidden_size", "num_hidden_layers"):
            if not isinstance(getattr(self.backbone_config, name, None), int):
                nested = getattr(self.backbone_config, "text_config", None)
                hint = "" if nested is None else (
                    f" It is a multimodal config whose language model is its text_config "
                    f"({nested.model_type}): pass backbone_config=config.text_config, or the text model's checkpoint.")
                raise ValueError(
                    f"backbone_config ({self.backbone_config.model_type}) has no integer {name}; "
                    f"llm_embed needs a decoder config with hidden_size and num_hidden_layers.{hint}"
                )
        num_layers = self.backbone_num_layers
        width = self.backbone_hidden_size * self.pooling_ff_mult
        if 3 * self.backbone_hidden_size * width >= 2**63:  # GEGLUFeedForward's two matrices
            raise ValueError(
                f"pooling_ff_mult={self.pooling_ff_mult!r} makes the head's feed-forward {width:.3g} units wide "
                f"(hidden_size {self.backbone_hidden_size} x pooling_ff_mult), beyond what a tensor can hold; it is a "
                "multiple of the hidden size (default 1.0)"
            )
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
        else:
            check_causal_support(self.backbone_config)


LLM_EMBEDDING_OPTIONS = tuple(inspect.signature(LLMEmbeddingConfig.__init__).parameters)[1:-1]
LLMEmbeddingConfig.__doc__ += options_docstring() + "\n"

__all__ = [
    "ABSENT_OPTION_VALUES", "ATTENTION_MODES", "BUILD_OPTIONS", "HEAD_OPTIONS", "OPTIONS", "ConfigOption",
    "LLMEmbeddingConfig", "RENAMED_OPTIONS", "check_head_options", "head_options_problem", "options_for_head",
]
