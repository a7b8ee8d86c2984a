"""Fine-tune an embedding model with the plain ``transformers.Trainer``: ``llm-embed-train`` /
``examples/train.py``.

    llm-embed-train --train_file ../shared/data/nli_triplets/snli_dev_triplets.jsonl \
        --output_dir out/smollm2-mlpool --max_steps 20 --per_device_train_batch_size 8

Every ``TrainingArguments`` option works (logging, eval, checkpoints, resume, bf16, gradient
accumulation; ``torchrun`` / ``accelerate launch`` for several processes). The model is built with
:meth:`LLMEmbeddingModel.from_backbone` (default backbone: the bundled SmolLM2-135M), trained on
(query, positive, negative) rows, and saved where ``AutoModel.from_pretrained`` loads it; with
``--lora`` the adapters are merged into the saved model and also kept under ``adapter/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments, set_seed

from .configuration_llm_embed import DEFAULT_PROMPTS
from .contrastive import find_fully_sharded_root
from .data import ContrastiveDataCollator, TripletDataset, check_prompt_names
from .lora import LORA_BASE_FILE, check_lora_sizes
from .modeling_llm_embed import LLMEmbeddingModel
from .optimization import EmbeddingTrainer, check_head_learning_rate
from .resume import RUN_FILE, check_resume, resolve_checkpoint, run_record, saved_cadence

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Where the backbone comes from and how it is adapted; the design options themselves
    (``--pooling``, ``--num_latents``, ...) are added from ``LLMEmbeddingConfig``'s schema."""

    backbone: str | None = field(
        default=None,
        metadata={"help": "decoder folder or Hub id; None means the bundled SmolLM2-135M-Instruct"},
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside --backbone"})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa, flex_attention, ...; None keeps transformers' choice"}
    )
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters on the backbone (needs peft)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (paper: 16)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (paper: 32)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (paper: 0.1)"})
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "learning rate of the parameters outside the backbone (pooling head, projection), which "
                          "start from their initialisation while the backbone is pretrained; the schedule scales it "
                          "like --learning_rate. None: --learning_rate for everything"},
    )


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "JSONL rows {query|anchor, positive, negative|negatives}"})
    eval_file: str | None = field(default=None, metadata={"help": "JSONL in the same format, for eval loss"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use only the first N training rows (N >= 1)"})
    max_eval_rows: int | None = field(default=None, metadata={"help": "use only the first N eval rows (N >= 1)"})
    query_prompt_name: str | None = field(
        default="query", metadata={"help": "prompt (config.prompts key) for queries; none for no prompt"}
    )
    document_prompt_name: str | None = field(
        default="document", metadata={"help": "prompt (config.prompts key) for positives and negatives; none for "
                                               "no prompt"}
    )

    def __post_init__(self):
        # the command line cannot pass None: "none" (or nothing) asks for no prompt
        for name in ("query_prompt_name", "document_prompt_name"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none"):
                setattr(self, name, None)


DESCRIPTION = """Fine-tune an llm_embed embedding model with the plain transformers Trainer.

Our options come first: the backbone and LoRA, the embedding design (every LLMEmbeddingConfig
option), the training data; then every transformers TrainingArguments option. Example (CPU, about
a minute with the bundled SmolLM2-135M):

  llm-embed-train --train_file triplets.jsonl --output_dir out --max_steps 10 \\
      --per_device_train_batch_size 8 --max_seq_length 64

Without --save_strategy / --save_steps only the final model is saved (no intermediate checkpoints
with optimizer state)."""


def build_parser() -> HfArgumentParser:
    """Our argument groups first (model, design from the config schema, data), then TrainingArguments."""
    from .cli import add_config_arguments

    parser = HfArgumentParser([ModelArguments], description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, dashes=False)
    for dataclass_type in (DataArguments, TrainingArguments):
        parser.dataclass_types.append(dataclass_type)
        parser._add_dataclass_arguments(dataclass_type)
    for action in parser._actions:  # HfArgumentParser sets the type from the field's annotation: no range check
        if action.dest in ("max_train_rows", "max_eval_rows"):
            action.type = positive_int
    return parser


def positive_int(text: str) -> int:
    """A row count of at least 1 (``--max_train_rows 0`` would otherwise be taken without a word)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 row, got {value}; leave the option out for every row")
    return value


def backbone_location(model_args: ModelArguments):
    """``--backbone``, or the bundled SmolLM2-135M's folder (converted on first use)."""
    if model_args.backbone is not None:
        return model_args.backbone
    from .bundled import smollm2_backbone_path

    return smollm2_backbone_path()


def build_model(model_args: ModelArguments, config_options: dict) -> LLMEmbeddingModel:
    return LLMEmbeddingModel.from_backbone(
        backbone_location(model_args),
        gguf_file=model_args.gguf_file,
        attn_implementation=model_args.attn_implementation,
        **config_options,
    )


def warn_of_other_prompts_at_inference(prompts: dict, query_prompt_name: str | None,
                                       document_prompt_name: str | None) -> None:
    """Say when the rows train with another prompt than the saved model's ``encode_query`` /
    ``encode_document`` will prepend (``prompts["query"]`` / ``prompts["document"]``): with
    ``--query_prompt_name none`` the model learns unprompted queries, then encodes every query after
    the default instruction. Not an error: a run may mean it (a prompt ablation), but not silently."""
    for side, name in (("query", query_prompt_name), ("document", document_prompt_name)):
        trained, encoded = prompts.get(name, "") if name else "", prompts.get(side, "")
        if trained != encoded:
            logger.warning(
                "%s texts train with the prompt %r (--%s_prompt_name %s) but the saved model's encode_%s prepends %r "
                "(its prompts[%r]): its %s vectors would come from text it was not trained on. Pass --prompts with "
                "the %s prompt you train with, or --%s_prompt_name %s",
                side, trained, side, name or "none", side, encoded, side, side, side, side, side)


def check_head_has_parameters(model_args: ModelArguments, config_options: dict) -> None:
    """Refuse ``--head_learning_rate`` for a design whose head has no parameters (mean / last_token
    pooling without ``--output_dim``) before the backbone loads: the optimizer would refuse it only at
    the first step, after a load that takes minutes for a large backbone. The head is built on the
    meta device from the backbone's config alone."""
    if model_args.head_learning_rate is None:
        return
    import torch
    from transformers import AutoConfig

    from .configuration_llm_embed import LLMEmbeddingConfig
    from .pooling import POOLING_HEADS

    gguf = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    config = LLMEmbeddingConfig(backbone_config=AutoConfig.from_pretrained(backbone_location(model_args), **gguf),
                                **config_options)
    if config.output_dim is not None:
        return
    with torch.device("meta"):
        head = POOLING_HEADS[config.pooling](config)
    if next(head.parameters(), None) is None:
        raise ValueError(
            f"--head_learning_rate is set but the {config.pooling} head has no parameters and there is no "
            "--output_dim projection: nothing would train at that rate. Leave out --head_learning_rate, or use a "
            "trainable head (--pooling latent_attention or multi_layer) or --output_dim"
        )


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
        config_options: dict | None = None) -> str:
    """Train and save; returns the folder of the final (merged) model. ``config_options``:
    :class:`LLMEmbeddingConfig` values (the rest keep the config's defaults)."""
    set_seed(training_args.seed)
    check_head_learning_rate(model_args.head_learning_rate)
    prompts = (config_options or {}).get("prompts")
    prompts = DEFAULT_PROMPTS if prompts is None else prompts
    check_prompt_names(prompts, data_args.query_prompt_name, data_args.document_prompt_name)
    warn_of_other_prompts_at_inference(prompts, data_args.query_prompt_name, data_args.document_prompt_name)
    # data and settings first: a bad row or option fails in seconds, not after the backbone has loaded
    train_data = TripletDataset.from_any(data_args.train_file, data_args.max_train_rows)
    eval_data = (TripletDataset.from_any(data_args.eval_file, data_args.max_eval_rows, what="evaluation data")
                 if data_args.eval_file else None)
    if training_args.world_size > 1 and not training_args.dataloader_drop_last:
        raise ValueError("training on several processes gathers equal per-rank batches: pass --dataloader_drop_last")
    check_batches_contrast(train_data, training_args.train_batch_size, training_args.world_size,
                           training_args.dataloader_drop_last, "training", "--per_device_train_batch_size")
    if eval_data is not None:
        check_batches_contrast(eval_data, training_args.eval_batch_size, training_args.world_size,
                               training_args.dataloader_drop_last, "evaluation", "--per_device_eval_batch_size")
    check_head_has_parameters(model_args, config_options or {})
    model = build_model(model_args, config_options or {})
    tokenizer, config = model.tokenizer, model.config
    record = run_record(model, model_args, training_args, data_args)
    # True: the last checkpoint in output_dir, found now, as the Trainer would, to be checked before a step
    training_args.resume_from_checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint,
                                                              training_args.output_dir)
    if training_args.resume_from_checkpoint:
        check_resume(training_args.resume_from_checkpoint, record)  # before a step: not a raw restore error
    base = (lora_base(model_args, config, config_options or {}, record["base_weights"], model.backbone.dtype)
            if model_args.lora else None)
    if training_args.remove_unused_columns:
        logger.info("setting remove_unused_columns=False: rows reach the collator as text, not as forward() arguments")
        training_args.remove_unused_columns = False
    collator = ContrastiveDataCollator(tokenizer, config, data_args.query_prompt_name, data_args.document_prompt_name)
    if model_args.lora:
        from .lora import apply_lora

        model = apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)
        model.print_trainable_parameters()
    trainer = EmbeddingTrainer(
        model=model,
        head_learning_rate=model_args.head_learning_rate,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        processing_class=tokenizer,
        checkpoint_files={RUN_FILE: record, **({LORA_BASE_FILE: base} if base else {})},
    )
    check_engine_applied(trainer, training_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # saved before the final evaluation, so that an evaluation that fails cannot lose the trained model
    output_dir = training_args.output_dir
    model = unsharded_model(trainer, model_args, config_options or {})  # every rank: gathering is collective
    if trainer.is_world_process_zero():
        if model_args.lora:
            from .lora import merge_lora

            model.save_pretrained(os.path.join(output_dir, "adapter"))
            with open(os.path.join(output_dir, "adapter", LORA_BASE_FILE), "w", encoding="utf-8") as handle:
                json.dump(base, handle, indent=1)  # llm-embed-evaluate out/adapter rebuilds the base from it
            merge_lora(model).save_pretrained(output_dir)
        elif model is trainer.model:
            trainer.save_model(output_dir)
        else:  # the gathered copy of a sharded run (it saves its tokenizer too)
            model.save_pretrained(output_dir)
        trainer.save_state()  # trainer_state.json: the log history (losses) beside the model
        logger.info("saved the trained model to %s (loads with AutoModel.from_pretrained)", output_dir)
    if eval_data is not None:
        logger.info("eval: %s", trainer.evaluate())  # every rank: the eval loss is gathered
        if trainer.is_world_process_zero():
            trainer.save_state()  # again, with the final eval loss in the log history
    return output_dir


def lora_base(model_args: ModelArguments, config, config_options: dict, base_weights: str | None = None,
              base_dtype=None) -> dict:
    """The :data:`~llm_embed.lora.LORA_BASE_FILE` of this run's adapters (its ``adapter/`` folder and
    checkpoints): what ``llm-embed-evaluate`` rebuilds their base from and ``load_lora`` checks."""
    from .lora import base_description

    return base_description(model_args.backbone, config.attention, config.pooling, model_args.attn_implementation,
                            config_options, gguf_file=model_args.gguf_file, base_weights=base_weights,
                            base_dtype=base_dtype)


def check_batches_contrast(data: TripletDataset, batch_size: int, world_size: int, drop_last: bool, what: str,
                           batch_option: str) -> None:
    """Refuse data that would make a batch of one query without hard negatives: the contrastive loss
    has nothing to contrast it with and raises, at that step (the last one of an epoch, or the final
    evaluation), long after the run started. The loss gathers the batches of all ``world_size``
    processes; without ``drop_last`` the last batch holds ``len(data) % batch_size`` rows. With
    ``drop_last``, data smaller than one batch of all processes is refused too: every batch would be
    dropped, no step would run, and an untrained model would be saved (or no eval loss computed)."""
    if drop_last and len(data) < batch_size * world_size:
        raise ValueError(
            f"--dataloader_drop_last would drop every {what} batch: the {what} data has {len(data)} rows, fewer than "
            f"one batch of {batch_size} rows x {world_size} process(es), so no {what} step would run; lower "
            f"{batch_option}, add rows, or drop --dataloader_drop_last (one process only)"
        )
    if len(data) == 0 or data[0]["negatives"]:  # every row has as many negatives as the first (checked)
        return
    full = batch_size * world_size
    last = 0 if drop_last else len(data) % batch_size
    if full == 1 or last == 1:  # several processes need drop_last (checked before): no short last batch there
        where = ("every batch" if full == 1 else
                 f"the last batch ({len(data)} rows in batches of {batch_size})")
        raise ValueError(
            f"the {what} data has no hard negatives and {where} would hold a single query, which the contrastive "
            f"loss cannot score (nothing to contrast it with); add negatives to the rows, change {batch_option} "
            f"(so that no batch holds exactly one row), or pass --dataloader_drop_last to skip the short last batch"
        )


def check_engine_applied(trainer, training_args: TrainingArguments) -> None:
    """Refuse a run whose sharding engine was asked for but not applied. accelerate applies FSDP
    only to accelerator processes and DeepSpeed only without ``--use_cpu``; elsewhere it goes on
    as plain DDP without a word, and a user would train (and size memory) unsharded unknowingly."""
    if training_args.fsdp and not trainer.is_fsdp_enabled:
        raise ValueError(
            "--fsdp was given but accelerate did not apply FSDP: it shards only GPU (or other accelerator) processes "
            f"and this run is {trainer.accelerator.distributed_type}. Drop --fsdp to train with DDP, or run on GPUs."
        )
    if training_args.deepspeed and not trainer.is_deepspeed_enabled:
        raise ValueError(
            "--deepspeed was given but accelerate did not apply DeepSpeed (it refuses it with --use_cpu; see "
            f"docs/training.md); this run is {trainer.accelerator.distributed_type}. Drop --deepspeed or run on GPUs."
        )
    if training_args.deepspeed:
        import torch.distributed as dist

        started = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if trainer.accelerator.num_processes != started:
            # on CPU processes accelerate starts DeepSpeed's process group but counts one process: every
            # rank would read the whole data set and the batch sizes would not add up
            raise ValueError(
                f"--deepspeed: {started} processes were started but accelerate counts "
                f"{trainer.accelerator.num_processes}; accelerate runs DeepSpeed across processes only on GPUs "
                "(see docs/training.md). Run on GPUs, or use one process, or drop --deepspeed for DDP."
            )


def unsharded_model(trainer, model_args: ModelArguments, config_options: dict):
    """The trained model as one process holds it, ready for ``save_pretrained``. Under FSDP or
    DeepSpeed each rank holds a shard: every rank takes part in gathering the full weights, and rank 0
    loads them into a fresh copy of the model (LoRA-wrapped like the trained one) so that the saving
    code (adapters, merge, safetensors, remote code) is the one of a single-process run. Other ranks
    get None. Without sharding: the trained model itself."""
    if find_fully_sharded_root(trainer.model) is not None:  # FSDP2, however it was applied: torch's own gathering
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors on rank 0 only
        state_dict = get_model_state_dict(trainer.model, options=options)
    elif trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    else:
        return trainer.model
    if not trainer.is_world_process_zero():
        return None
    with outside_zero3_init():
        model = build_model(model_args, config_options)
        if model_args.lora:
            from .lora import apply_lora

            model = apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)
    model.load_state_dict(state_dict, strict=True)
    return model


@contextmanager
def outside_zero3_init():
    """Inside: models are built with whole weights even though a DeepSpeed ZeRO-3 run is configured.
    transformers builds every model under ``deepspeed.zero.Init`` (weights partitioned over the
    ranks, empty on each) while the Trainer's ZeRO-3 config is registered; the copy that receives
    the gathered weights must be an ordinary one."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref  # set by the Trainer; no public getter
    config = registered() if registered is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


SAVE_OPTIONS = ("--save_strategy", "--save_steps")
SAVE_LIMIT = "--save_total_limit"


def gives_option(args: list[str], options: tuple[str, ...], shortest: int) -> bool:
    """Whether the command line sets one of ``options`` in any spelling the parser takes: underscores
    or dashes (``--save-steps``, as --help lists them), ``--opt value`` or ``--opt=value``, or an
    abbreviation argparse expands of at least ``shortest`` characters (``--save_strat``)."""
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = "--" + arg[2:].split("=", 1)[0].replace("-", "_")
        if len(name) >= shortest and any(option.startswith(name) for option in options):
            return True
    return False


def gives_save_option(args: list[str]) -> bool:
    """Whether the command line sets ``--save_strategy`` or ``--save_steps``: such a choice must not be
    overridden by the forced ``--save_strategy no``."""
    return gives_option(args, SAVE_OPTIONS, len("--save_st"))


def gives_save_limit(args: list[str]) -> bool:
    """Whether the command line sets ``--save_total_limit`` (in any spelling, ``--save_t`` at shortest)."""
    return gives_option(args, (SAVE_LIMIT,), len("--save_t"))


def save_options(resume_from_checkpoint: str | None, given: bool, limit_given: bool = False) -> dict:
    """The save options to add to what the user gave: none when a save option was given; else the
    cadence of the run a resumed run continues (:func:`~llm_embed.resume.saved_cadence`), with its
    ``save_total_limit`` unless ``limit_given``, so that it goes on writing (and deleting) checkpoints
    as that run did; else ``save_strategy no`` (only the final model is saved)."""
    if given:
        return {}
    saved = saved_cadence(resume_from_checkpoint) if resume_from_checkpoint else None
    if saved is None or saved["save_strategy"] == "no":
        return {"save_strategy": "no"}
    if limit_given:
        saved.pop("save_total_limit", None)
    strategy, limit = saved["save_strategy"], saved.get("save_total_limit")
    logger.warning("resuming from %s: checkpoints every %s %s%s, as the run that wrote it (pass --save_strategy no "
                   "for none)", resume_from_checkpoint, saved["save_steps"] if strategy == "steps" else "", strategy,
                   f", keeping the last {limit} (--save_total_limit)" if limit is not None else "")
    return saved


LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout")


def check_lora_options(given: dict | list[str], lora: bool) -> None:
    """Refuse LoRA sizes given without ``--lora``: the run would fine-tune every weight, with another
    memory footprint and saved form than asked for, and ignore them without a word. ``given``: the
    arguments file's dict, or the command line (``--lora_r 8``, ``--lora-r=8``)."""
    if lora:
        return
    if isinstance(given, dict):
        named = [name for name in LORA_OPTIONS if name in given]
    else:
        # any spelling argparse takes, abbreviations included (at least "--lora_" and one more letter)
        named = [name for name in LORA_OPTIONS if gives_option(given, ("--" + name,), len("--lora_") + 1)]
    if named:
        raise ValueError(f"{' '.join('--' + name for name in named)} given without --lora: these size LoRA adapters, "
                         "which only --lora trains; add --lora, or drop them to fine-tune every weight")


def main(argv: list[str] | None = None) -> str:
    """Parse the arguments (``sys.argv`` by default, or one JSON / YAML file holding them), train,
    save; returns the saved model's folder. The console command runs :func:`cli`, which turns this
    into an exit status."""
    from .cli import check_head_options, config_kwargs
    from .configuration_llm_embed import OPTIONS

    parser = build_parser()
    args = list(argv if argv is not None else sys.argv[1:])
    if args and args[0].endswith((".json", ".yaml", ".yml")) and not args[0].startswith("-"):
        if len(args) > 1:
            parser.error(f"{args[0]} is an arguments file, which holds every option: put {' '.join(args[1:])} into "
                         "it, or pass every option on the command line instead")
        values = coerce_values(read_arguments_file(args[0]), args[0])
        config_options = {option.name: values.pop(option.name) for option in OPTIONS if option.name in values}
        given = any(key in values for key in ("save_strategy", "save_steps"))
        if "resume_from_checkpoint" in values:  # true (the Trainer's "last checkpoint") names its folder here
            values["resume_from_checkpoint"] = resolve_checkpoint(values["resume_from_checkpoint"],
                                                                  values.get("output_dir"))
        values.update(save_options(values.get("resume_from_checkpoint"), given, "save_total_limit" in values))
        check_load_best(values.get("load_best_model_at_end", False), values.get("save_strategy") != "no")
        model_args, data_args, training_args = parser.parse_dict(values)
        given_args: dict | list[str] = values
    else:
        given = gives_save_option(args)
        known = parser.parse_known_args(args)[0]  # argparse alone: no TrainingArguments checks yet
        added = save_options(known.resume_from_checkpoint, given, gives_save_limit(args))
        check_load_best(known.load_best_model_at_end, added.get("save_strategy") != "no")
        args += [word for key, value in added.items() for word in (f"--{key}", str(value))]
        model_args, data_args, training_args, *rest, unknown = parser.parse_args_into_dataclasses(
            args, return_remaining_strings=True)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
        config_options = config_kwargs(rest[0]) if rest else {}
        given_args = args
    if data_args.max_eval_rows is not None and data_args.eval_file is None:
        raise ValueError("--max_eval_rows limits the rows of --eval_file, which was not given: add --eval_file, or "
                         "drop --max_eval_rows")
    check_head_options(config_options, dashes=False)
    check_launched(training_args)
    check_lora_options(given_args, model_args.lora)
    if model_args.lora:
        check_lora_sizes(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)  # before the backbone
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(model_args, data_args, training_args, config_options)


#: What a distributed launcher (torchrun, accelerate launch, deepspeed) sets in each process's environment.
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


def check_launched(training_args) -> None:
    """``--deepspeed`` and ``--fsdp`` need a launcher's processes: in a plain process DeepSpeed looks for
    MPI (``No module named 'mpi4py'``) and transformers answers "fsdp only works in distributed training",
    after the backbone has loaded and neither naming the fix. Refused before anything loads."""
    for flag, value in (("--deepspeed", training_args.deepspeed), ("--fsdp", training_args.fsdp)):
        if value and not any(name in os.environ for name in LAUNCHER_VARIABLES):
            raise ValueError(
                f"{flag} runs under a distributed launcher, and this is a plain process (no LOCAL_RANK / RANK in "
                "its environment): run `torchrun --standalone --nproc_per_node <GPUs> -m llm_embed.train ...` with "
                "the same options (one process: --nproc_per_node 1), or `accelerate launch -m llm_embed.train ...`")


def check_load_best(load_best: bool, saves: bool) -> None:
    """``--load_best_model_at_end`` picks among checkpoints; without a save option (nor a cadence a
    resumed run takes from its checkpoint) the command line saves none (``save_strategy no``), and
    transformers' error would be about a strategy the user never set. Refused here, naming the
    options to add."""
    if load_best and not saves:
        raise ValueError("--load_best_model_at_end chooses among checkpoints, and without --save_strategy / "
                         "--save_steps none are written: add --save_strategy with the same value as --eval_strategy "
                         "(and --save_steps as --eval_steps), or drop --load_best_model_at_end")


TEXT_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def coerce_values(values: dict, path: str) -> dict:
    """An arguments file's values, with numbers and booleans written as text made numbers and
    booleans for options of those types. ``parse_dict`` passes text on untouched: YAML 1.1 reads
    ``1e-3`` (no dot) as text, which failed much later inside the optimizer without naming the option,
    and ``"lora": "false"`` in JSON is a non-empty string, so LoRA was trained. Text that is not a
    number (or ``true`` / ``false``, ``yes`` / ``no``, ``1`` / ``0``) is refused, naming the file,
    the option and its type."""
    import typing

    from .configuration_llm_embed import OPTIONS

    kinds = {option.name: {"int": int, "float": float, "bool": bool}[option.kind] for option in OPTIONS
             if option.kind in ("int", "float", "bool")}
    for dataclass_type in (ModelArguments, DataArguments, TrainingArguments):
        for name, hint in typing.get_type_hints(dataclass_type).items():
            kinds_of = typing.get_args(hint) or (hint,)
            typed = [kind for kind in (bool, float, int) if kind in kinds_of]
            if typed and str not in kinds_of:  # text is a value of its own for a str | float option
                kinds[name] = typed[0]
    coerced = dict(values)
    for name, value in values.items():
        if name not in kinds or not isinstance(value, str):
            continue
        if kinds[name] is bool:
            if value.strip().lower() not in TEXT_BOOLEANS:
                raise ValueError(f"{path}: {name}: {value!r} is not a boolean; write true or false")
            coerced[name] = TEXT_BOOLEANS[value.strip().lower()]
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{path}: {name}: {value!r} is not a number; write it as one, e.g. "
                             f"{name}: {'0.001' if kinds[name] is float else '10'}") from None
        if kinds[name] is int and not number.is_integer():
            raise ValueError(f"{path}: {name}: {value!r} is not a whole number")
        coerced[name] = int(number) if kinds[name] is int else number
    return coerced


def read_arguments_file(path: str) -> dict:
    """The arguments of a JSON or YAML file, as a dict (config options and training options together)."""
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".json"):
            try:
                values = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        else:
            import yaml

            try:
                values = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}")
    return values


def cli() -> int:
    """``llm-embed-train``: exit status 0 on success, 1 with a one-line reason on an error
    (see :mod:`llm_embed.cli`)."""
    from .cli import run_console

    return run_console(main, "llm-embed-train")


__all__ = ["DataArguments", "ModelArguments", "build_parser", "cli", "main", "run"]


if __name__ == "__main__":
    sys.exit(cli())
