"""Resuming ``llm-embed-train`` from a checkpoint: the run must continue the one that wrote it.

The Trainer restores weights, optimizer and scheduler from a checkpoint onto whatever model the new
command built. Built another way, the restore fails with a raw optimizer or index error (another
head, LoRA or not, another ``--head_learning_rate``: other parameter groups), or, worse, succeeds:
the attention mode leaves no trace in the weights, so a bidirectional checkpoint resumed with
``--attention causal`` trains on as causal without a word. So every checkpoint gets
:data:`RUN_FILE`, the options that shape the model, the loss and the optimizer, and its run's save
cadence; :func:`check_resume` compares it with the new run before a step is taken.
:class:`~llm_embed.optimization.EmbeddingTrainer` writes it (:func:`write_run_files`) right after
the checkpoint's model, before the Trainer deletes older checkpoints (``save_total_limit``): a
callback's ``on_save`` runs after that deletion, so an interrupt there left the only checkpoint
without its record, and a resume of it went unchecked. Checkpoints
written before :data:`RUN_FILE` existed are checked on what they hold: ``config.json``'s design (full
fine-tuning) or ``adapter_config.json``'s sizes (LoRA).

The command line forces ``--save_strategy no`` when no save option is given (only the final model
is saved); a resumed run would then write no checkpoint at all. :func:`saved_cadence` gives it the
cadence (and ``save_total_limit``) of the run it continues instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .configuration_llm_embed import OPTIONS, LLMEmbeddingConfig
from .hub import recorded_location
from .lora import LORA_BASE_FILE

logger = logging.getLogger(__name__)

#: in every checkpoint of ``llm-embed-train``: what :func:`check_resume` compares a resumed run with
RUN_FILE = "llm_embed_run.json"

#: config options a resumed run may change: they alter neither the weights nor the loss's values
#: (GradCache's mini-batch size only trades memory for time; padding side and the initial scale of
#: weights that the checkpoint overwrites change nothing)
FREE_ON_RESUME = ("loss_mini_batch_size", "padding_side", "initializer_range")

#: the backbone config fields that decide every weight's shape and what the layers compute with them (a
#: checkpoint of full fine-tuning holds the weights, not the config: a Mixtral resumed with another
#: num_experts_per_tok would route otherwise without a word); a field a checkpoint did not record is not
#: compared, nor is one the backbone lacks (None on both sides)
BACKBONE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                   "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
                   "max_position_embeddings", "rope_theta", "rope_parameters", "sliding_window", "layer_types",
                   "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size")


def as_json(value):
    """``value`` as it reads back from JSON (tuples as lists), so that saved and new values compare."""
    return json.loads(json.dumps(value, default=str))


def run_record(model, model_args, training_args, data_args=None) -> dict:
    """What a checkpoint of this run records: the design (``model.config``), LoRA and the head's
    learning rate from ``model_args``, the save cadence and ``save_total_limit`` from ``training_args``,
    the prompts its queries and documents were trained with (``data_args``: which prompt applies
    changes every loss value);
    under LoRA also a fingerprint of the backbone's weights (the frozen base the adapters sit on, which
    the checkpoint does not hold). ``model``: before LoRA is applied."""
    config = model.config
    strategy = training_args.save_strategy
    base_weights = None
    if model_args.lora:
        from .corpus import weights_fingerprint

        base_weights = weights_fingerprint(model.backbone)
    return as_json({
        **design_and_shape(config),
        "lora": ({"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout}
                 if model_args.lora else None),
        "head_learning_rate": model_args.head_learning_rate,
        "training_prompts": (None if data_args is None else
                             {"query": data_args.query_prompt_name, "document": data_args.document_prompt_name}),
        "base_weights": base_weights,
        "base_backbone": model_args.backbone,
        "save_strategy": getattr(strategy, "value", strategy),
        "save_steps": training_args.save_steps,
        "save_total_limit": training_args.save_total_limit,
    })


def design_and_shape(config) -> dict:
    """The ``design`` (every option a resume must keep) and ``backbone`` (:data:`BACKBONE_FIELDS`) entries
    of a record, from an :class:`LLMEmbeddingConfig`."""
    return as_json({
        "design": {option.name: getattr(config, option.name) for option in OPTIONS
                   if option.name not in FREE_ON_RESUME},
        "backbone": {key: getattr(config.backbone_config, key, None) for key in BACKBONE_FIELDS},
    })


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path} to check the resumed run against its checkpoint: {error}") from error


def saved_record(checkpoint: Path) -> dict:
    """The checkpoint's :data:`RUN_FILE`, or, for a checkpoint written before it existed, what its
    ``config.json`` (design, backbone) and ``adapter_config.json`` (LoRA sizes) tell."""
    if (checkpoint / RUN_FILE).is_file():
        return read_json(checkpoint / RUN_FILE)
    record: dict = {}
    if (checkpoint / "config.json").is_file():
        # loaded as the model loads it: renamed options, options saved configs lack, derived defaults
        record.update(design_and_shape(LLMEmbeddingConfig.from_pretrained(str(checkpoint))), lora=None)
    if (checkpoint / "adapter_config.json").is_file():
        adapter = read_json(checkpoint / "adapter_config.json")
        record["lora"] = {"r": adapter.get("r"), "alpha": adapter.get("lora_alpha"),
                          "dropout": adapter.get("lora_dropout")}
    return record


def lora_base_path(checkpoint: Path) -> str | None:
    """The backbone a LoRA checkpoint's :data:`~llm_embed.lora.LORA_BASE_FILE` names (None: none recorded,
    or the bundled one), for checkpoints written before :data:`RUN_FILE` held a weights fingerprint."""
    path = checkpoint / LORA_BASE_FILE
    return read_json(path).get("backbone") if path.is_file() else None


def describe(value) -> str:
    return "not set" if value is None else json.dumps(value)


def check_resume(checkpoint, record: dict) -> None:
    """Refuse to resume from ``checkpoint`` a run whose :func:`run_record` differs from the one that
    wrote it, naming each difference and the fix. A checkpoint that is not a folder is left to the
    Trainer, which names it."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return
    if not (folder / "trainer_state.json").is_file() or not any(folder.glob("rng_state*.pth")):
        inside = sorted(path.name for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir())
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} is not a Trainer checkpoint: it lacks trainer_state.json or the "
            f"RNG / optimizer state beside it, so training would go on with a fresh optimizer and schedule. Pass "
            f"one of its {PREFIX_CHECKPOINT_DIR}-N folders{hint}, or start a new run without it"
        )
    saved = saved_record(folder)
    differences = []
    poolings = {record["design"]["pooling"], saved.get("design", {}).get("pooling")}
    for name, value in record["design"].items():
        if name == "layer_reduction" and not poolings & {"multi_layer", "latent_attention"}:
            continue  # only those heads read it; its default follows the attention mode, a difference named already
        if name in saved.get("design", {}) and saved["design"][name] != value:
            differences.append(f"--{name} {describe(saved['design'][name])} (this run: {describe(value)})")
    for key, value in record["backbone"].items():
        if saved.get("backbone", {}).get(key, value) != value:
            differences.append(f"a backbone with {key} {describe(saved['backbone'][key])} "
                               f"(this run: {describe(value)})")
    if "lora" in saved and saved["lora"] != record["lora"]:
        lora = lambda sizes: ("no --lora" if sizes is None else
                              f"--lora --lora_r {sizes['r']} --lora_alpha {sizes['alpha']} "
                              f"--lora_dropout {sizes['dropout']}")
        differences.append(f"{lora(saved['lora'])} (this run: {lora(record['lora'])})")
    if "head_learning_rate" in saved and saved["head_learning_rate"] != record["head_learning_rate"]:
        differences.append(f"--head_learning_rate {describe(saved['head_learning_rate'])} "
                           f"(this run: {describe(record['head_learning_rate'])})")
    for side, value in (record.get("training_prompts") or {}).items():
        trained = (saved.get("training_prompts") or {}).get(side, value)  # not recorded (older): not compared
        if trained != value:
            differences.append(f"--{side}_prompt_name {trained or 'none'} (this run: {value or 'none'})")
    if saved.get("base_weights") and record["base_weights"]:
        theirs, other_base = saved.get("base_backbone"), saved["base_weights"] != record["base_weights"]
    else:  # a checkpoint of an older llm_embed: the path its llm_embed_base.json names
        theirs = lora_base_path(folder)
        other_base = (record["lora"] is not None and theirs is not None
                      and theirs != recorded_location(record["base_backbone"]))
    if other_base:
        bundled = "the bundled SmolLM2-135M"
        differences.append(f"LoRA adapters on a backbone with other weights (the checkpoint's: {theirs or bundled}; "
                           f"this run's: {record['base_backbone'] or bundled}), which they were not trained on")
    if differences:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was written by a run with {'; '.join(differences)}. Resuming "
            "restores that run's weights and optimizer onto this run's model, so they must be built alike: pass "
            "the checkpoint's values, or leave out --resume_from_checkpoint to start a new run"
        )


def saved_cadence(checkpoint) -> dict | None:
    """The save options of the run that wrote ``checkpoint``: ``save_strategy`` and ``save_steps``, and
    ``save_total_limit`` when it set one, from its :data:`RUN_FILE` (which holds the limit since
    2026-11-30); for an older checkpoint the ``save_steps`` of its ``trainer_state.json``, by steps.
    None when ``checkpoint`` is not a folder (the Trainer names it) or the run saved no cadence."""
    folder = Path(checkpoint)
    if (folder / RUN_FILE).is_file():
        record = read_json(folder / RUN_FILE)
        options = {"save_strategy": record["save_strategy"], "save_steps": record["save_steps"]}
        if record.get("save_total_limit") is not None:
            options["save_total_limit"] = record["save_total_limit"]
        return options
    if (folder / "trainer_state.json").is_file():
        steps = read_json(folder / "trainer_state.json").get("save_steps")
        return {"save_strategy": "steps", "save_steps": steps} if steps else None
    return None


def resolve_checkpoint(resume_from_checkpoint, output_dir) -> str | None:
    """``resume_from_checkpoint`` as a folder, or None for no resume: ``True`` (the Trainer's own spelling,
    what an arguments file's ``true`` gives) is the last ``checkpoint-N`` in ``output_dir``, as
    ``Trainer.train`` finds it (``get_last_checkpoint``); ``False`` is no resume. The folder is needed
    before training starts: :func:`check_resume` compares it, :func:`saved_cadence` reads it."""
    if resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is not True:
        return resume_from_checkpoint
    if output_dir is None:
        raise ValueError("resume_from_checkpoint true resumes from the last checkpoint in output_dir, which is not "
                         "given: add output_dir, or pass the checkpoint's folder")
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        raise ValueError(f"resume_from_checkpoint true resumes from the last {PREFIX_CHECKPOINT_DIR}-N folder in "
                         f"output_dir {output_dir}, and there is none: pass the checkpoint's folder, or leave out "
                         "resume_from_checkpoint to start a new run")
    return last


def write_run_files(folder, files: dict[str, dict]) -> None:
    """Write ``files`` (:data:`RUN_FILE` and, for LoRA, the base description that ``llm-embed-evaluate``
    rebuilds adapters onto) into the checkpoint ``folder``, each file whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # a sharded FSDP model is saved after this, with the optimizer
    for name, content in files.items():
        staging = folder / f".{name}.tmp"
        staging.write_text(json.dumps(content, indent=1), encoding="utf-8")
        os.replace(staging, folder / name)


__all__ = ["RUN_FILE", "check_resume", "resolve_checkpoint", "run_record", "saved_cadence", "write_run_files"]
