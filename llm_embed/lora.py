"""LoRA through peft (optional extra ``pip install llm-embed[peft]``): adapters on the backbone's
linear layers, the pooling head (and projection) trained in full.

The paper's recipe: r=16, alpha=32, dropout 0.1 on q, k, v, o, gate, up, down. By default the
targets are every linear layer inside the decoder blocks (for GPT-2 its Conv1D layers), found by
looking at the model rather than by a per-architecture table.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
from pathlib import Path

from torch import nn

from .configuration_llm_embed import BUILD_OPTIONS, OPTIONS, options_for_head
from .hub import check_local_path, recorded_location
from .layer_states import find_decoder_layers

logger = logging.getLogger(__name__)

#: beside peft's adapter files (``llm-embed-study --save-models``, ``llm-embed-train --lora``'s
#: ``adapter/`` folder and checkpoints): the backbone and design the adapters were trained on, which
#: ``llm-embed-evaluate`` rebuilds them onto and :func:`load_lora` checks a base against
LORA_BASE_FILE = "llm_embed_base.json"

#: the config options besides :data:`BUILD_OPTIONS` that change what encode returns (read at every
#: encode, so a base built without the recorded value gives other vectors than the trained model):
#: every design option but the padding side (results do not depend on it) and the initial scale of the
#: head's weights (the adapters' saved head replaces them)
ENCODE_OPTIONS = tuple(option.name for option in OPTIONS if option.group == "design"
                       and option.name not in BUILD_OPTIONS + ("padding_side", "initializer_range"))


def base_description(backbone, attention: str, pooling: str, attn_implementation: str | None, config: dict,
                     gguf_file: str | None = None, base_weights: str | None = None, base_dtype=None) -> dict:
    """The :data:`LORA_BASE_FILE` content: the decoder (None: the bundled SmolLM2-135M; a local folder
    as an absolute path, so that the file works from any folder) and the other
    ``LLMEmbeddingModel.from_backbone`` arguments (``config``: the config options given, besides
    attention and pooling); ``base_weights``: the backbone's :func:`~llm_embed.corpus.weights_fingerprint`
    before the adapters were put on it, in ``base_dtype``, which :func:`load_lora` compares with a base
    given in the same dtype (:func:`check_saved_base`)."""
    config = {key: value for key, value in config.items() if key not in ("attention", "pooling")}
    if gguf_file is not None:
        config["gguf_file"] = gguf_file
    description = {"backbone": recorded_location(backbone), "attention": attention, "pooling": pooling,
                   "attn_implementation": attn_implementation, "config": config}
    if base_weights is not None:
        description["base_weights"] = {"fingerprint": base_weights, "dtype": dtype_name(base_dtype)}
    return description


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_peft():
    try:
        return importlib.import_module("peft")
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'llm-embed[peft]' (or pip install peft)") from err


def default_lora_targets(model) -> str:
    """A regex over module names: every linear (or GPT-2 Conv1D) layer inside the decoder blocks. A
    subclass of ``nn.Linear`` with a forward of its own is left out: it is not a plain linear map
    (Llama 4's router returns a tuple, which peft's LoRA layer cannot add to)."""
    layers = find_decoder_layers(model.backbone, model.config.backbone_num_layers)
    names = set()
    for name, module in layers.named_modules():
        linear = isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
        if linear or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("found no linear layers in the decoder blocks to put LoRA adapters on")
    return r"backbone\..*\.(" + "|".join(sorted(map(re.escape, names))) + r")$"


def trained_head_modules(model) -> list[str]:
    return ["pooler"] + (["projection"] if model.projection is not None else [])


def check_lora_sizes(r, alpha, dropout) -> None:
    """Refuse LoRA sizes peft would take and train with: a rank below 1, an alpha of 0 or below (the
    update scaled by alpha / r: 0 trains nothing, a negative one trains against the gradient's
    intent), a dropout outside [0, 1)."""
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
        raise ValueError(f"LoRA rank r (--lora_r) must be a whole number of at least 1, got {r!r}; the paper uses 16")
    if not (number(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha (--lora_alpha) must be above 0, got {alpha!r}; the paper uses 32 (2 x r)")
    if not (number(dropout) and 0 <= dropout < 1):
        raise ValueError(f"LoRA dropout (--lora_dropout) must be in [0, 1), got {dropout!r}; the paper uses 0.1")


def default_lora_target_parameters(model) -> list[str]:
    """The weights inside the decoder blocks that are not in a linear layer but are matrices per expert:
    a mixture of experts' fused experts (Mixtral's and Qwen3-MoE's ``mlp.experts.gate_up_proj`` /
    ``down_proj``, 3-D: one matrix per expert). LoRA on linear layers alone leaves them, i.e. the whole
    MLP of such a model, untrained; peft adapts them through ``target_parameters``. Names relative to a
    layer, as peft matches them (by suffix)."""
    layers = find_decoder_layers(model.backbone, model.config.backbone_num_layers)
    names = []
    for name, parameter in layers[0].named_parameters():
        if parameter.ndim == 3 and name not in names:
            names.append(name)
    return names


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.1, target_modules=None):
    """Wrap ``model`` in a ``peft.PeftModel``: adapters on the backbone, head fully trainable. By default
    on every linear layer of the decoder blocks (:func:`default_lora_targets`) and on a mixture of
    experts' fused expert weights (:func:`default_lora_target_parameters`)."""
    check_lora_sizes(r, alpha, dropout)
    peft = require_peft()
    parameters = [] if target_modules is not None else default_lora_target_parameters(model)
    extra = {}
    if parameters:
        if "target_parameters" not in inspect.signature(peft.LoraConfig).parameters:
            raise ImportError(
                f"the backbone's experts hold their weights as fused parameters ({', '.join(parameters)}), which "
                f"this peft ({peft.__version__}) cannot adapt: LoRA would train attention only. pip install -U "
                "'peft>=0.17', or pass target_modules= to choose the layers yourself")
        extra["target_parameters"] = parameters
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or default_lora_targets(model),
        modules_to_save=trained_head_modules(model),
        **extra,
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as error:
        if parameters and dropout and "dropout" in str(error):
            raise ValueError(
                f"this peft ({peft.__version__}) adapts the backbone's fused expert weights ({', '.join(parameters)}) "
                f"only without LoRA dropout ({error}): pass --lora_dropout 0 (apply_lora(..., dropout=0.0) in "
                "Python), or, in Python, target_modules= without the experts to leave them untrained") from error
        raise


def load_lora(model, adapter_path: str, is_trainable: bool = False, **hub_kwargs):
    """Put adapters (and the trained head) saved by ``peft_model.save_pretrained`` or pushed by
    ``peft_model.push_to_hub`` (a folder or a Hub repo id; ``hub_kwargs`` such as ``revision``,
    ``cache_dir``, ``token``) on a base model built the same way as for training
    (``LLMEmbeddingModel.from_backbone`` with the same design and the same options that change what
    encode returns, such as ``max_seq_length``: :func:`check_saved_design`)."""
    peft = require_peft()
    folder = adapter_folder(adapter_path, hub_kwargs)
    base = saved_base(folder)
    if base is not None:  # adapters saved by hand carry no record: only their head is checked
        check_saved_design(model, base, adapter_path)
        check_saved_base(model, base, adapter_path)
    check_saved_head_fits(model, folder, adapter_path)
    return peft.PeftModel.from_pretrained(model, adapter_path, is_trainable=is_trainable, **hub_kwargs)


def adapter_folder(adapter_path, hub_kwargs: dict) -> str:
    """The local folder holding the adapter files: ``adapter_path`` itself, or for a Hub repo id the
    snapshot of its adapter files (peft fetches the same files next, from the same cache), so that
    :func:`check_saved_design` and :func:`check_saved_head_fits` see them before peft loads them."""
    path = os.fspath(adapter_path)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    check_local_path(path)  # a mistyped local folder is named as such, not looked up on the Hub

    subfolder = hub_kwargs.get("subfolder") or ""
    names = ("adapter_config.json", "adapter_model.safetensors", LORA_BASE_FILE)
    snapshot = snapshot_download(path, allow_patterns=[f"{subfolder}/{name}".lstrip("/") for name in names],
                                 **{key: hub_kwargs[key] for key in ("revision", "cache_dir", "token")
                                    if key in hub_kwargs})
    return os.path.join(snapshot, subfolder)


def saved_base(folder) -> dict | None:
    """The :data:`LORA_BASE_FILE` in ``folder`` (the files of some adapters), or None without one."""
    path = Path(folder) / LORA_BASE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_saved_design(model, base: dict, adapter_path) -> None:
    """Refuse adapters whose :data:`LORA_BASE_FILE` (``base``, read from the files of ``adapter_path``)
    records another design than ``model``'s: the attention mode (and a head option without weights,
    such as ``layer_reduction``) leaves no trace in the weights that :func:`check_saved_head_fits`
    compares; nor do the options :data:`ENCODE_OPTIONS` (``--max_seq_length 32`` trained, a base at
    the default 512: a long text's vector 0.43 off in cosine from the merged model's)."""
    # only the options the head reads: older studies recorded every design's head options for every design
    keywords = {"attention": base.get("attention"), "pooling": base.get("pooling"),
                **options_for_head(base.get("pooling"), base.get("config", {}))}
    config = model.config
    differing = [name for name in BUILD_OPTIONS + ENCODE_OPTIONS
                 if name in keywords and json.loads(json.dumps(keywords[name])) != json.loads(json.dumps(
                     getattr(config, name)))]
    if differing:
        differences = "; ".join(f"{name}={keywords[name]!r} there, {getattr(config, name)!r} in the model"
                                for name in differing)
        build = ", ".join(f"{name}={value!r}" for name, value in keywords.items())
        encode = [name for name in differing if name in ENCODE_OPTIONS]
        changed = (f" To encode with another {' / '.join(encode)} on purpose, load with the recorded value and set "
                   f"it on the model's config afterwards (model.config.{encode[0]} = ...)." if encode else "")
        raise ValueError(
            f"the adapters in {adapter_path} were trained on another design ({differences}, as its "
            f"{LORA_BASE_FILE} records): the vectors would not be the trained model's. Build the base as they "
            f"were trained (LLMEmbeddingModel.from_backbone(decoder, {build})), or evaluate the folder with "
            f"llm-embed-evaluate, which rebuilds it.{changed}"
        )


def check_saved_base(model, base: dict, adapter_path) -> None:
    """Refuse adapters put on other base weights than they were trained on (adapters of SmolLM2-Instruct
    on SmolLM2-base, or any decoder of the same shapes: they load and give other vectors, 0.68 off in a
    test): :data:`LORA_BASE_FILE` records the base's weights fingerprint (of ``llm-embed-train`` runs, since
    2026-11-29), compared when the base is in the dtype it was taken in (a fingerprint hashes exact bytes).
    Otherwise only the decoder's location can be compared: a base built from another one is warned about (a
    moved folder is too; it is not refused)."""
    recorded, given = base.get("backbone"), getattr(model.config, "name_or_path", None) or None
    weights = base.get("base_weights")
    if weights is not None and weights.get("dtype") == dtype_name(model.backbone.dtype):  # exact bytes: same dtype
        from .corpus import weights_fingerprint

        if weights_fingerprint(model.backbone) != weights["fingerprint"]:
            raise ValueError(
                f"the adapters in {adapter_path} were trained on other base weights than this model's backbone "
                f"({given or 'unknown source'}; the adapters' {LORA_BASE_FILE} records "
                f"{recorded or 'the bundled SmolLM2-135M'}): on another decoder, even of the same shapes, they give "
                "other vectors. Build the base from the decoder they were trained on, or evaluate the folder with "
                "llm-embed-evaluate, which rebuilds it.")
    elif recorded is not None and given is not None and recorded_location(given) != recorded:
        logger.warning(
            "the adapters in %s were trained on %s (%s), and this base was built from %s: if that is another "
            "decoder, the vectors are not the trained model's.", adapter_path, recorded, LORA_BASE_FILE, given)


def check_saved_head_fits(model, folder, adapter_path) -> None:
    """Refuse adapters (their files in ``folder``) whose saved head (the weights that are not LoRA
    matrices) does not fit ``model``: peft loads what it can and drops the rest without a word, so
    adapters trained with a ``latent_attention`` head put on a ``mean`` base lose the trained head and
    give other vectors."""
    path = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.isfile(path):
        return
    from safetensors import safe_open

    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(path, "pt") as handle:
        saved = {key.removeprefix("base_model.model."): tuple(handle.get_slice(key).get_shape())
                 for key in handle.keys() if ".lora_" not in key}
    head = {name for name in own if name.split(".", 1)[0] in trained_head_modules(model)}
    problems = [f"{name} {shape} is not in the model" if name not in own else
                f"{name} is {shape} there, {own[name]} in the model"
                for name, shape in sorted(saved.items()) if own.get(name) != shape]
    problems += [f"{name} is not saved there" for name in sorted(head - set(saved))]
    if problems:
        raise ValueError(
            f"the adapters in {adapter_path} were trained with another head than this model's "
            f"(pooling={model.config.pooling!r}): {'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}. "
            "Build the base with the design they were trained with (LLMEmbeddingModel.from_backbone(decoder, "
            "attention=..., pooling=..., and the same head sizes))."
        )


def merge_lora(peft_model):
    """A plain :class:`LLMEmbeddingModel` with the adapters merged into the backbone weights and the
    trained head in place: ``save_pretrained`` it and it loads through ``AutoModel``."""
    base = peft_model.base_model.model
    tokenizer = base._tokenizer
    merged = peft_model.merge_and_unload()
    merged._tokenizer = tokenizer
    return merged


__all__ = ["LORA_BASE_FILE", "apply_lora", "base_description", "check_lora_sizes", "load_lora", "merge_lora"]
