"""The paper's five-design study on your backbone and data: ``llm-embed-study`` / ``examples/reproduce_paper.py``.

    llm-embed-study --data-dir ../shared/data --output-dir study_out --seeds 0 1 --bf16

Trains the five designs of Tang & Yang (2024) (table below) on the same backbone, training rows,
seed and budget, evaluates each on every task, and writes to ``--output-dir``:

- ``runs/design{N}_seed{S}.json``: one run's training log and task results with per-item scores,
  written as soon as the run is scored (a cut-off study keeps what it finished; a failing design or
  Ctrl-C first waits for the scoring already under way and keeps those runs);
- ``results.json``: everything, plus the paired significance tests and the paper's claims checked;
- ``results.md``: tables by task category and per task, the tests, the claims' verdicts;
- ``designs.png``: the designs side by side per category (needs matplotlib).

The tasks are the built-in ones under ``--data-dir`` (``--tasks``) and tasks on your own files
(``--task KIND:FILES key=value ...``, :mod:`llm_embed.evaluation.task_specs`), scored and tested
alike. ``--save-models DIR`` keeps each trained design as ``DIR/design{N}_seed{S}``: by default
the LoRA adapters and trained head (peft's files plus ``llm_embed_base.json``, which names the
backbone and design; 19-27 MiB for SmolLM2-135M, see docs/evaluation.md), with
``--save-merged`` (or ``--no-lora``) the whole model; ``llm-embed-evaluate DIR/design5_seed0
--task ...`` scores either to the study's numbers.

``--report-only`` rebuilds the three reports from ``runs/`` without training (e.g. on a machine
with matplotlib after a GPU run made with ``--no-report``). Runs already in ``runs/`` are not
trained again, so a cut-off study resumes where it stopped; each run file records the arguments and
data it was made with, and a rerun (or ``--report-only``) with others that change a run's model or
scores is refused (:data:`RUN_ARGUMENTS`, :func:`check_rerun`). Embedding happens on the training
device; scoring (logistic regression, k-means, the metrics) runs in CPU worker processes while the
next design trains.

| design | attention | pooling |
|---|---|---|
| 1 | causal | last token (EOS) |
| 2 | causal | last-layer trainable pooling (``latent_attention``) |
| 3 | causal | multi-layers trainable pooling (``multi_layer``) |
| 4 | bidirectional | last-layer trainable pooling |
| 5 | bidirectional | multi-layers trainable pooling |
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .evaluation.significance import compare, holm
from .evaluation.task_specs import (
    TaskSpec,
    TaskSpecError,
    build_tasks,
    check_unique_names,
    parse_task_specs,
    task_spec_help,
)
from .evaluation.tasks import LIMIT_KEYS, TaskResult, default_tasks, parse_task_limit

logger = logging.getLogger(__name__)

DESIGNS = {
    1: ("causal", "last_token"),
    2: ("causal", "latent_attention"),
    3: ("causal", "multi_layer"),
    4: ("bidirectional", "latent_attention"),
    5: ("bidirectional", "multi_layer"),
}
CATEGORIES = ("sts", "retrieval", "classification", "clustering")
TASK_NAMES = ("stsb", "sick", "scifact", "banking77", "stackoverflow")
ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    """One of the paper's findings, as design pairs that should compare a certain way on some categories.

    ``expect`` is ``"better"`` (first design significantly better than the second) or
    ``"not_worse"`` (first design not significantly worse)."""

    text: str
    categories: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    expect: str


PAPER_CLAIMS = (
    Claim("bidirectional attention beats causal (with the same trainable pooling) on STS and retrieval",
          ("sts", "retrieval"), ((4, 2), (5, 3)), "better"),
    Claim("multi-layers trainable pooling beats last-layer trainable pooling on STS and retrieval",
          ("sts", "retrieval"), ((3, 2), (5, 4)), "better"),
    Claim("EOS last-token pooling with causal attention is as good as the trainable designs on classification "
          "and clustering", ("classification", "clustering"), ((1, 2), (1, 3), (1, 4), (1, 5)), "not_worse"),
)


def design_name(design: int) -> str:
    attention, pooling = DESIGNS[design]
    return f"{design}: {attention} + {pooling}"


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def builtin_task_names(args) -> list[str]:
    """``--tasks`` if given; otherwise all five, or none when ``--task`` names tasks of your own."""
    if args.tasks is not None:
        return list(args.tasks)
    return [] if args.task else list(TASK_NAMES)


def task_spec(args) -> dict:
    """What the scoring processes rebuild the tasks from (plain, picklable values)."""
    return {"data_dir": args.data_dir, "names": builtin_task_names(args), "limit": args.task_limit,
            "own": parse_task_specs(args.task)}


def build_study_tasks(spec: dict) -> list:
    """The built-in tasks, then the own ones, names checked unique (results are keyed by name)."""
    own: list[TaskSpec] = spec["own"]
    tasks = (default_tasks(spec["data_dir"], spec["names"], spec["limit"]) if spec["names"] else []) + build_tasks(own)
    check_unique_names(tasks)
    return tasks


_WORKER_TASKS: dict = {}


def _init_worker(spec: dict, threads: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    _WORKER_TASKS.update({task.name: task for task in build_study_tasks(spec)})


def _score_in_worker(task_name: str, embeddings: dict) -> dict:
    return _WORKER_TASKS[task_name].score(embeddings).to_dict()


def read_triplets(paths: list[str], limit: int | None):
    from .data import TripletDataset

    # Each file read and checked by TripletDataset.from_jsonl (errors name file:line), then joined so
    # that the rows of all files are checked together (one number of hard negatives throughout).
    parts = []
    for path in paths:
        remaining = None if limit is None else limit - sum(len(part) for part in parts)
        if remaining == 0:
            break
        parts.append(TripletDataset.from_jsonl(path, remaining))
    rows = [row for part in parts for row in part.rows]
    locations = [where for part in parts for where in part.locations]
    return TripletDataset(rows, locations, source=", ".join(map(str, paths)))


def build_model(args, design: int, backbone_path):
    from .modeling_llm_embed import LLMEmbeddingModel

    attention, pooling = DESIGNS[design]
    from .cli import config_kwargs
    from .configuration_llm_embed import options_for_head

    # one set of options for five designs: a head option reaches the designs whose head reads it
    return LLMEmbeddingModel.from_backbone(
        backbone_path, attention=attention, pooling=pooling, attn_implementation=args.attn_implementation,
        **options_for_head(pooling, config_kwargs(args)),
    )


def runs_on_cpu(args) -> bool:
    """Whether the study trains and embeds on the CPU: ``--device cpu``, or ``auto`` (the default) on a
    machine without CUDA. The Trainer is told so (``use_cpu``): without it, ``--bf16`` on such a machine
    failed in transformers with "You need to assign use_cpu", an option this command does not have."""
    import torch

    return args.device == "cpu" or not torch.cuda.is_available()


def has_trainable_head(model) -> bool:
    """Whether ``model`` (plain or LoRA-wrapped: :func:`~llm_embed.optimization.is_head_parameter` sees
    through peft's prefixes) trains a parameter outside the backbone: a trainable pooling head or an
    ``--output-dim`` projection. Design 1 (last token) without ``--output-dim`` has none."""
    from .optimization import is_head_parameter

    return any(parameter.requires_grad and is_head_parameter(name) for name, parameter in model.named_parameters())


def train_design(args, design: int, seed: int, backbone_path, train_data):
    """Fine-tune one design (LoRA by default, as the paper) and return the plain model plus its log."""
    from transformers import TrainingArguments, set_seed

    from .data import ContrastiveDataCollator
    from .optimization import EmbeddingTrainer

    if args.save_models:  # before training: a refusal should not cost a run
        check_saved_form(Path(args.save_models) / f"design{design}_seed{seed}", args.save_merged or not args.lora)
    set_seed(seed)
    model = build_model(args, design, backbone_path)
    tokenizer = model.tokenizer
    collator = ContrastiveDataCollator(tokenizer, model.config)
    if args.lora:
        from .lora import apply_lora

        model = apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout)
    # --head-learning-rate is the pooling head's rate: a design without one (design 1 without --output-dim)
    # has nothing it applies to, and set_head_learning_rate would refuse it inside trainer.train(), failing
    # every default study; that design trains all its parameters at --learning-rate.
    head_learning_rate = args.head_learning_rate
    if head_learning_rate is not None and not has_trainable_head(model):
        logger.info("--head-learning-rate does not apply to design %d (%s): it has no trainable head (no pooling "
                    "head, no --output-dim projection); it trains at --learning-rate", design, design_name(design))
        head_learning_rate = None
    run_dir = Path(args.output_dir) / "checkpoints" / f"design{design}_seed{seed}"
    training_args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_steps=args.max_steps, warmup_steps=warmup_steps(args.warmup_ratio, args.max_steps),
        lr_scheduler_type="linear", weight_decay=0.0, seed=seed, data_seed=seed, bf16=args.bf16,
        logging_steps=max(1, args.max_steps // 20), save_strategy="no", report_to=[], remove_unused_columns=False,
        dataloader_drop_last=True, disable_tqdm=True, use_cpu=runs_on_cpu(args),
    )
    try:
        trainer = EmbeddingTrainer(model=model, args=training_args, train_dataset=train_data, data_collator=collator,
                                   processing_class=tokenizer, head_learning_rate=head_learning_rate)
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    finally:
        remove_empty_run_folder(run_dir)
    if trainer.state.global_step == 0:  # check_train_rows refuses the known cause before any training
        raise ValueError(
            f"design {design} seed {seed} ran no optimizer step ({len(train_data)} training rows, --batch-size "
            f"{args.batch_size}, --max-steps {args.max_steps}): its model is untrained, so it is not scored as a "
            "trained design. Give at least one batch of training rows (lower --batch-size or add rows).")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    log = {"train_seconds": train_seconds, "losses": losses}
    saved = Path(args.save_models) / f"design{design}_seed{seed}" if args.save_models else None
    if saved is not None and args.lora and not args.save_merged:
        save_lora_design(model, saved, study_base_description(args, design))
    if args.lora:
        from .lora import merge_lora

        model = merge_lora(model)
    if saved is not None and (args.save_merged or not args.lora):
        model.save_pretrained(saved)  # atomic (llm_embed.atomic_save); loads through AutoModel
    if saved is not None:
        size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
        logger.info("design %d seed %d saved to %s (%.1f MiB)", design, seed, saved, size / 2**20)
        log.update(saved_model=str(saved), saved_bytes=size)
    return model, log


def remove_empty_run_folder(run_dir: Path) -> None:
    """Remove the Trainer's ``output_dir`` of one run, and ``checkpoints/`` above it, when empty.

    The Trainer creates its ``output_dir`` when it is built, but a study run saves no checkpoint there
    (``save_strategy="no"``; ``--save-models`` is where trained models are kept), so every run used to
    leave an empty ``checkpoints/design{N}_seed{S}/`` in ``--output-dir``. A folder holding anything
    (a ``--save-models`` folder pointed there, files of the user's) is never removed."""
    for folder in (run_dir, run_dir.parent):
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()


def check_saved_form(folder: Path, merged: bool) -> None:
    """Refuse to save one form of a design (merged model, or adapters + head) over a folder holding the
    other: the atomic save keeps files it does not write, so the folder would hold both and load as
    the older one (an adapter folder wins in ``load_model``)."""
    from .lora import LORA_BASE_FILE

    if not folder.is_dir():
        return
    has_adapters = (folder / LORA_BASE_FILE).is_file() or (folder / "adapter_config.json").is_file()
    has_merged = (folder / "config.json").is_file()
    if (merged and has_adapters) or (not merged and has_merged):
        held, wanted = ("LoRA adapters", "a merged model") if merged else ("a merged model", "LoRA adapters")
        raise ValueError(f"{folder} holds {held} from an earlier study; saving {wanted} there would mix the two. "
                         "Remove the folder or pass another --save-models.")


def study_base_description(args, design: int) -> dict:
    """What :func:`llm_embed.evaluation.runner.load_model` rebuilds a LoRA design's base from: the
    same ``from_backbone`` arguments as :func:`build_model` (:func:`~llm_embed.lora.base_description`)."""
    from .cli import config_kwargs
    from .configuration_llm_embed import options_for_head
    from .lora import base_description

    attention, pooling = DESIGNS[design]
    return base_description(args.backbone, attention, pooling, args.attn_implementation,
                            options_for_head(pooling, config_kwargs(args)))


def save_lora_design(peft_model, folder: Path, base: dict) -> None:
    """peft's adapter files (LoRA weights and the trained head, ``modules_to_save``) and the base
    description, written atomically (:mod:`llm_embed.atomic_save`): a cut-off save leaves no
    half-written design for a later evaluation to load."""
    from .atomic_save import save_atomically
    from .lora import LORA_BASE_FILE

    def write(staging: str) -> None:
        peft_model.save_pretrained(staging)
        (Path(staging) / LORA_BASE_FILE).write_text(json.dumps(base, indent=1), encoding="utf-8")

    save_atomically(folder, write, replaced_names=("adapter_config.json", "adapter_model.safetensors", LORA_BASE_FILE))


def embed_tasks(args, model, tasks) -> tuple[dict, float]:
    import torch

    model.eval()
    if args.bf16:
        model.to(torch.bfloat16)
    start = time.perf_counter()
    embedded = {task.name: task.embed(model, batch_size=args.eval_batch_size) for task in tasks}
    return embedded, time.perf_counter() - start


def check_train_rows(rows: int, args, train_files: list[str]) -> None:
    """Refuse training data smaller than one batch, before any design trains. The study drops a short
    last batch (``dataloader_drop_last``: every step contrasts a full batch), so with fewer rows than
    ``--batch-size`` every batch was dropped, no step ran, and each design was scored untrained as if
    trained (losses ``[]``, "final loss nan", exit status 0), as ``llm-embed-train`` refuses too
    (:func:`llm_embed.train.check_batches_contrast`)."""
    if rows >= args.batch_size:
        return
    source = f"--max-train-rows {args.max_train_rows} of " if args.max_train_rows is not None else ""
    source += ", ".join(map(str, train_files))
    fix = (f"give at least {args.batch_size} rows" + (" (raise --max-train-rows)" if args.max_train_rows else "")
           + (f", or lower --batch-size to {rows} or fewer" if rows >= 2 else ""))
    raise ValueError(
        f"the training data has {rows} row{'' if rows == 1 else 's'} ({source}), fewer than one batch of "
        f"--batch-size {args.batch_size}: the study drops a short last batch, so no training step would run and "
        f"every design would be scored untrained; {fix}")


def run_path(output_dir, design: int, seed: int) -> Path:
    return Path(output_dir) / "runs" / f"design{design}_seed{seed}.json"


def run_study(args) -> dict:
    """Train and evaluate every (seed, design) not yet in ``runs/``, then write the reports."""
    import torch

    output_dir = Path(args.output_dir)
    (output_dir / "runs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    on_cpu = runs_on_cpu(args)
    native_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()
    if args.bf16 and on_cpu and not native_bf16:
        logger.warning("--bf16 on a CPU without native bfloat16 (no AVX512-BF16 / AMX): measured about 20 times "
                       "slower than fp32 on such a CPU (180 s vs 9 s per step); leave --bf16 out here")
    backbone_path = args.backbone
    if backbone_path is None:
        from .bundled import smollm2_backbone_path

        backbone_path = smollm2_backbone_path()
    train_files = args.train_files or [
        str(Path(args.data_dir) / "nli_triplets" / f"snli_{split}_triplets.jsonl") for split in ("dev", "test")
    ]
    train_data = read_triplets(train_files, args.max_train_rows)
    check_train_rows(len(train_data), args, train_files)
    tasks = build_study_tasks(task_spec(args))
    arguments, data_files = run_arguments(args), data_file_records(args, train_files)
    check_rerun(output_dir, arguments, data_files)  # before any training: kept runs are not made again
    logger.info("study: %d training rows, tasks %s, designs %s, seeds %s", len(train_data),
                [t.name for t in tasks], args.designs, args.seeds)
    executor = ProcessPoolExecutor(args.score_workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(task_spec(args), args.score_threads))
    pending: list[tuple[dict, dict[str, Future]]] = []

    def write_run(run: dict, futures: dict[str, Future]) -> None:
        record = {key: value for key, value in run.items() if key != "_scoring_started"}
        record["results"] = [futures[task.name].result() for task in tasks]
        record["score_wall_seconds"] = time.perf_counter() - run["_scoring_started"]
        run_path(output_dir, run["design"], run["seed"]).write_text(json.dumps(record))
        logger.info("scored design %d seed %d: %s", run["design"], run["seed"],
                    {r["task"]: round(r["main_score"], 2) for r in record["results"]})
        pending.remove((run, futures))

    def collect(block: bool) -> None:
        for run, futures in list(pending):
            if block or all(f.done() for f in futures.values()):
                write_run(run, futures)

    def write_environment() -> dict:
        environment = {**describe_environment(args), "study_wall_seconds": time.perf_counter() - started}
        (output_dir / "runs" / "environment.json").write_text(json.dumps(environment))
        return environment

    def keep_scored_runs(error: BaseException) -> None:
        """On the way out because of ``error`` (a failed design, Ctrl-C): wait for the scoring already
        submitted and write those runs, which were trained and embedded and used to be lost with the
        failure (their files were written only at the next collect). A run whose scoring fails too
        (a worker hit by the same Ctrl-C) is logged, never raised: ``error`` is what the user sees."""
        for run, futures in list(pending):
            name = f"design {run['design']} seed {run['seed']}"
            if not all(f.done() for f in futures.values()):
                logger.info("stopped by %s: waiting for the scoring of %s to keep its run (Ctrl-C stops waiting)",
                            type(error).__name__, name)
            try:
                failure = next((f.exception() for f in futures.values() if f.exception() is not None), None)
                if failure is None:
                    write_run(run, futures)
            except Exception as other:  # writing the run file failed (disk full, ...)
                failure = other
            if failure is not None and failure is not error:  # the scoring that failed the study: raised as is
                logger.error("%s was trained but not kept: its scoring or run file failed too (%s: %s)", name,
                             type(failure).__name__, failure)

    try:
        for seed in args.seeds:
            for design in args.designs:
                if run_path(output_dir, design, seed).is_file():
                    logger.info("design %d seed %d already done; skipping", design, seed)
                    if args.save_models and not (Path(args.save_models) / f"design{design}_seed{seed}").is_dir():
                        logger.warning("design %d seed %d was trained by an earlier run without --save-models, so "
                                       "it is not saved; delete %s to train and save it again", design, seed,
                                       run_path(output_dir, design, seed))
                    continue
                model, log = train_design(args, design, seed, backbone_path, train_data)
                embedded, embed_seconds = embed_tasks(args, model, tasks)
                del model
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                attention, pooling = DESIGNS[design]
                run = dict(design=design, attention=attention, pooling=pooling, seed=seed, embed_seconds=embed_seconds,
                           arguments=arguments, data_files=data_files, _scoring_started=time.perf_counter(), **log)
                logger.info("design %d seed %d: trained in %.1f s (final loss %.3f), embedded in %.1f s",
                            design, seed, log["train_seconds"], log["losses"][-1] if log["losses"] else float("nan"),
                            embed_seconds)
                futures = {name: executor.submit(_score_in_worker, name, emb) for name, emb in embedded.items()}
                pending.append((run, futures))
                collect(block=False)
        collect(block=True)
    except BaseException as error:
        keep_scored_runs(error)
        # the kept runs are reported with --report-only, which takes the device and software from this
        # file; a failure to write it is logged, never raised: ``error`` is what the user sees
        try:
            write_environment()
        except Exception as other:
            logger.error("runs/environment.json was not written (%s: %s)", type(other).__name__, other)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    environment = write_environment()
    if args.no_report:
        logger.info("runs written to %s; build the reports with --report-only", output_dir / "runs")
        return {"environment": environment}
    return write_reports(args)


def warmup_steps(warmup_ratio: float, max_steps: int) -> int:
    """The learning-rate warm-up of ``--warmup-ratio``: none for 0, at least one step otherwise (a
    positive ratio of a short run, e.g. 0.1 of 4 steps, still warms up)."""
    return 0 if warmup_ratio == 0 else max(1, round(warmup_ratio * max_steps))


def describe_environment(args) -> dict:
    import torch
    import transformers

    device = torch.cuda.get_device_name() if not runs_on_cpu(args) else (
        platform.processor() or platform.machine())
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# ----------------------------------------------------------------------------------------------
# What a run was made with: a rerun continues the kept runs or is refused

#: The arguments that decide a run's model or scores, and so must be the same for every run of one
#: ``--output-dir``: a run kept in ``runs/`` is not trained again, so a rerun with another value would
#: report the kept scores under the new value. Each run file records them (``arguments``), with every
#: embedding-model option given (``--max-seq-length``, ``--num-latents``, ...: all build the model)
#: and the contents of the data files (``data_files``), since a file edited in place is other data
#: under the same argument. ``tasks`` is recorded as the built-in tasks that ran (``--task`` alone
#: runs none), ``data_dir`` only where it was read (built-in tasks or the default training files),
#: ``lora_*`` only with LoRA; a value left out is recorded as ``None``. The built-in tasks' files are
#: named by ``--data-dir`` and not hashed (the checksums in the data folder's ``SHA256SUMS`` cover them).
RUN_ARGUMENTS = ("backbone", "data_dir", "train_files", "max_train_rows", "tasks", "task", "task_limit",
                 "max_steps", "batch_size", "learning_rate", "head_learning_rate", "warmup_ratio", "lora", "lora_r",
                 "lora_alpha", "lora_dropout", "attn_implementation", "bf16")

#: The other arguments, which a rerun may change, and why they change no kept run.
OTHER_ARGUMENTS = {
    "output_dir": "where the study is",
    "designs": "which runs to make: each run file is one (design, seed), so a rerun may add some",
    "seeds": "which runs to make: each run file is one (design, seed), so a rerun may add some",
    "device": "where the study runs, like the machine and the software (recorded in runs/environment.json)",
    "eval_batch_size": "an embedding does not depend on its batch (position ids from the mask, masked pooling)",
    "score_workers": "how many processes score, not what they compute",
    "score_threads": "how many threads score, not what they compute",
    "save_models": "where trained models are kept, not how they are trained",
    "save_merged": "in which form trained models are kept",
    "no_plot": "which reports are written",
    "no_report": "which reports are written",
    "report_only": "whether to train or only report",
}

#: The options that size LoRA adapters: refused with ``--no-lora`` (given, not left at their defaults).
LORA_SIZES = ("lora_r", "lora_alpha", "lora_dropout")

#: How a difference names an argument where its flag is not ``--`` + the name with dashes.
_FLAGS = {"lora": "--no-lora"}


def run_arguments(args) -> dict:
    """The :data:`RUN_ARGUMENTS` and embedding-model options of ``args`` as a run file records them
    (JSON values, compared after a round trip through JSON)."""
    from .cli import config_kwargs

    values = {name: getattr(args, name) for name in RUN_ARGUMENTS}
    values["tasks"] = builtin_task_names(args)
    if args.train_files is not None and not values["tasks"]:
        values["data_dir"] = None  # not read: a rerun may name another
    if not args.lora:
        values.update(lora_r=None, lora_alpha=None, lora_dropout=None)
    values.update(config_kwargs(args))
    return json.loads(json.dumps(values))


def file_record(path) -> dict:
    """Path as given, size and sha256: a file edited in place is other data under the same argument."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def data_file_records(args, train_files: list[str]) -> dict:
    """Size and sha256 of the training files and of the ``--task`` files, in order."""
    own = [file for spec in parse_task_specs(args.task) for file in spec.files]
    return {"train_files": [file_record(path) for path in train_files], "task": [file_record(path) for path in own]}


_NOT_GIVEN = object()


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _shown(name: str, value) -> str:
    """A recorded value as the command line gives it (``--task``'s specs as written)."""
    if name == "lora":
        return "not given" if value else "given"
    if value is None and name == "data_dir":
        return "not read"
    if value is None and name.startswith("lora_"):
        return "not used (--no-lora)"
    if value is _NOT_GIVEN or value is None:
        return "not given"
    if isinstance(value, bool):
        return "given" if value else "not given"
    if name == "task":
        return " --task ".join(" ".join(group) for group in value)
    if isinstance(value, dict):
        return " ".join(f"{key}={number}" for key, number in value.items())
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def argument_differences(current: dict, kept: dict, names=None, kept_label: str = "kept runs") -> list[str]:
    """``--max-steps 7 (kept runs: 2)`` for each argument (of ``names``; default: all) that differs."""
    names = [name for name in (names or {**kept, **current}) if name in kept or name in current]
    lines = []
    for name in names:
        now, then = current.get(name, _NOT_GIVEN), kept.get(name, _NOT_GIVEN)
        if now != then:
            lines.append(f"{_flag(name)} {_shown(name, now)} ({kept_label}: {_shown(name, then)})")
    return lines


def file_differences(current: dict, kept: dict) -> list[str]:
    """Each data file whose size or sha256 differs from the kept runs' file at the same path (edited
    in place); another path is an argument difference already (:func:`argument_differences`)."""
    lines = []
    for option, files in current.items():
        kept_files = {record["path"]: record for record in kept.get(option, [])}
        for now in files:
            then = kept_files.get(now["path"])
            if then is not None and (now["bytes"], now["sha256"]) != (then["bytes"], then["sha256"]):
                lines.append(f"{now['path']} has changed since the kept runs ({now['bytes']} bytes, sha256 "
                             f"{now['sha256'][:12]}...; kept runs: {then['bytes']} bytes, "
                             f"sha256 {then['sha256'][:12]}...)")
    return lines


def kept_run_files(output_dir) -> list[Path]:
    return sorted((Path(output_dir) / "runs").glob("design*_seed*.json"))


def check_rerun(output_dir, arguments: dict, data_files: dict) -> None:
    """Refuse to train into an ``--output-dir`` whose kept runs were made with other
    :data:`RUN_ARGUMENTS` or data: the kept runs would be skipped and reported as made with these
    arguments. Runs written before the study recorded its arguments cannot be checked, so they are
    refused too (nothing says which arguments would continue them)."""
    for path in kept_run_files(output_dir):
        run = json.loads(path.read_text())
        if "arguments" not in run:
            raise ValueError(
                f"{path} has no record of the arguments it was made with (written before llm-embed-study recorded "
                "them), so this rerun cannot check that it continues the same study and would report that run "
                "under its own arguments. Pass another --output-dir to start a new study (--report-only still "
                "reports the kept runs), or delete the run files to train them again.")
        found = argument_differences(arguments, run["arguments"]) + file_differences(data_files,
                                                                                     run.get("data_files", {}))
        if found:
            raise ValueError(
                f"{Path(output_dir)} holds runs made with other arguments or data than this rerun's ({path.name} "
                f"and the other kept runs are not trained again, so the reports would give their scores under these "
                f"arguments): {'; '.join(found)}. Pass another --output-dir to start a new study, or the kept runs' "
                f"arguments (\"arguments\" in {path}) and data to continue this one.")


def recorded_arguments(output_dir, runs: list[dict]) -> dict | None:
    """The arguments every run in ``runs/`` was made with, or ``None`` for runs written before the study
    recorded them. Runs made with different ones are refused: one report would compare designs
    trained or scored differently."""
    records = {json.dumps(run.get("arguments"), sort_keys=True): run for run in runs}
    if len(records) > 1:
        first, other = list(records.values())[:2]
        names = [run_path(output_dir, run["design"], run["seed"]).name for run in (first, other)]
        found = (argument_differences(other["arguments"], first["arguments"], kept_label=names[0])
                 if first.get("arguments") is not None and other.get("arguments") is not None
                 else ["one has no record of its arguments"])
        raise ValueError(
            f"the runs in {Path(output_dir) / 'runs'} were made with different arguments ({names[1]}: "
            f"{'; '.join(found)}), so one report would compare designs trained or scored differently. "
            "Move the runs that belong to another study to their own --output-dir.")
    return runs[0].get("arguments")


def given_arguments(argv: list[str] | None) -> set[str]:
    """The options given on the command line (not left at their defaults), by destination name:
    ``--report-only`` compares only these with the runs' record, the others take the runs' values.
    argparse tells a default from a given value only when the default is ``SUPPRESS``, hence the
    second parse with every default suppressed."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------------------------
# Reports


def load_runs(output_dir) -> list[dict]:
    runs = [json.loads(path.read_text()) for path in kept_run_files(output_dir)]
    if not runs:
        raise FileNotFoundError(f"no runs in {Path(output_dir) / 'runs'}; run the study first")
    return runs


def results_of(run: dict) -> dict[str, TaskResult]:
    return {r["task"]: TaskResult(**r) for r in run["results"]}


def category_scores(run: dict) -> dict[str, float]:
    """Mean main score per task category (the paper's table), plus their mean."""
    by_category: dict[str, list[float]] = {}
    for result in run["results"]:
        by_category.setdefault(result["category"], []).append(result["main_score"])
    scores = {c: float(np.mean(v)) for c, v in by_category.items()}
    scores["average"] = float(np.mean([scores[c] for c in CATEGORIES if c in scores]))
    return scores


def pairwise_tests(runs: list[dict]) -> list[dict]:
    """Every pair of designs on every task, per seed; p-values Holm-adjusted over the pairs of one task and seed."""
    by_key = {(run["design"], run["seed"]): results_of(run) for run in runs}
    designs = sorted({run["design"] for run in runs})
    seeds = sorted({run["seed"] for run in runs})
    rows = []
    for seed in seeds:
        present = [d for d in designs if (d, seed) in by_key]
        tasks = sorted(set.intersection(*(set(by_key[(d, seed)]) for d in present))) if present else []
        for task in tasks:
            block = []
            for i, a in enumerate(present):
                for b in present[i + 1:]:
                    comparison = compare(by_key[(a, seed)][task], by_key[(b, seed)][task], seed=seed)
                    block.append(dict(seed=seed, a=a, b=b, category=by_key[(a, seed)][task].category,
                                      **comparison.to_dict()))
            for row, adjusted in zip(block, holm([row["p_value"] for row in block])):
                row["p_holm"] = adjusted
            rows += block
    return rows


def lookup(tests: list[dict], a: int, b: int, task: str, seed: int) -> tuple[float, float] | None:
    """(difference a - b, Holm p) whichever way the pair was stored."""
    for row in tests:
        if row["task"] == task and row["seed"] == seed and {row["a"], row["b"]} == {a, b}:
            sign = 1 if row["a"] == a else -1
            return sign * row["difference"], row["p_holm"]
    return None


def check_claims(runs: list[dict], tests: list[dict]) -> list[dict]:
    """Each claim, on each of its categories' tasks and design pairs, per seed: significant better,
    significantly worse, or no significant difference; then a verdict over all of them."""
    seeds = sorted({run["seed"] for run in runs})
    category_of = {r["task"]: r["category"] for run in runs for r in run["results"]}
    verdicts = []
    for claim in PAPER_CLAIMS:
        outcomes = []
        for task, category in sorted(category_of.items()):
            if category not in claim.categories:
                continue
            for a, b in claim.pairs:
                for seed in seeds:
                    found = lookup(tests, a, b, task, seed)
                    if found is None:
                        continue
                    difference, p_holm = found
                    outcome = "n.s." if p_holm >= ALPHA else ("better" if difference > 0 else "worse")
                    outcomes.append(dict(task=task, a=a, b=b, seed=seed, difference=difference, p_holm=p_holm,
                                         outcome=outcome))
        if not outcomes:
            verdict = "not tested"
        elif claim.expect == "better":
            hits = sum(o["outcome"] == "better" for o in outcomes)
            verdict = "agrees" if hits == len(outcomes) else "contradicted" if all(
                o["outcome"] == "worse" for o in outcomes) else "partly" if hits else "not reproduced"
        else:
            misses = sum(o["outcome"] == "worse" for o in outcomes)
            verdict = "agrees" if misses == 0 else "contradicted" if misses == len(outcomes) else "partly"
        verdicts.append(dict(claim=claim.text, expect=claim.expect, verdict=verdict, outcomes=outcomes))
    return verdicts


def summary_table(runs: list[dict]) -> dict[int, dict[str, tuple[float, float, int]]]:
    """design -> category -> (mean over seeds, spread (max - min) over seeds, number of seeds)."""
    table = {}
    for design in sorted({run["design"] for run in runs}):
        per_seed = [category_scores(run) for run in runs if run["design"] == design]
        table[design] = {
            key: (float(np.mean([s[key] for s in per_seed])), float(np.ptp([s[key] for s in per_seed])), len(per_seed))
            for key in per_seed[0]
        }
    return table


def format_markdown(runs: list[dict], tests: list[dict], claims: list[dict], environment: dict) -> str:
    table = summary_table(runs)
    columns = [c for c in (*CATEGORIES, "average") if c in next(iter(table.values()))]
    seeds = sorted({run["seed"] for run in runs})
    lines = [f"Designs by task category (main score x100; mean over seeds {seeds}, ± half the max-min spread):", "",
             "| design | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for design, scores in table.items():
        cells = [f"{scores[c][0]:.2f} ± {scores[c][1] / 2:.2f}" if scores[c][2] > 1 else f"{scores[c][0]:.2f}"
                 for c in columns]
        lines.append(f"| {design_name(design)} | " + " | ".join(cells) + " |")
    tasks = sorted({(r["category"], r["task"], r["main_metric"]) for run in runs for r in run["results"]})
    lines += ["", "Per task (mean over seeds):", "", "| design | " + " | ".join(
        f"{task} ({metric})" for _, task, metric in tasks) + " | train s | final loss |",
        "|---" * (len(tasks) + 3) + "|"]
    for design in table:
        design_runs = [run for run in runs if run["design"] == design]
        cells = [f"{np.mean([results_of(run)[task].main_score for run in design_runs]):.2f}" for _, task, _ in tasks]
        train = np.mean([run["train_seconds"] for run in design_runs])
        loss = np.mean([run["losses"][-1] for run in design_runs if run["losses"]])
        lines.append(f"| {design_name(design)} | " + " | ".join(cells) + f" | {train:.0f} | {loss:.3f} |")
    lines += ["", (f"The paper's claims (per item paired tests, Holm-adjusted over all design pairs of a task and "
                   f"seed, alpha {ALPHA}):"), "", "| claim | verdict | outcomes (task, a vs b, seed: a - b, p) |",
              "|---|---|---|"]
    for claim in claims:
        outcomes = "; ".join(f"{o['task']} {o['a']} vs {o['b']} s{o['seed']}: {o['difference']:+.2f} "
                             f"(p {o['p_holm']:.3g}, {o['outcome']})" for o in claim["outcomes"])
        lines.append(f"| {claim['claim']} | **{claim['verdict']}** | {outcomes} |")
    lines += ["", "All pairwise tests (a - b with 95% bootstrap CI; p raw and Holm-adjusted):", "",
              "| seed | task | test | a | b | a - b | 95% CI | p | p (Holm) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in tests:
        lines.append(f"| {row['seed']} | {row['task']} | {row['test']} | {row['a']} | {row['b']} | "
                     f"{row['difference']:+.2f} | [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] | "
                     f"{row['p_value']:.3g} | {row['p_holm']:.3g} |")
    env = ", ".join(f"{k} {v}" for k, v in environment.items() if not isinstance(v, float))
    lines += ["", f"Environment: {env}."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path) -> None:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "the plot needs matplotlib: pip install 'llm-embed[evaluation]' (or pass --no-plot)"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary_table(runs)
    columns = [c for c in (*CATEGORIES, "average") if c in next(iter(table.values()))]
    width = 0.8 / len(table)
    figure, axis = plt.subplots(figsize=(9, 5))
    for offset, (design, scores) in enumerate(table.items()):
        x = np.arange(len(columns)) + (offset - (len(table) - 1) / 2) * width
        means = [scores[c][0] for c in columns]
        spread = [scores[c][1] / 2 for c in columns] if scores[columns[0]][2] > 1 else None
        axis.bar(x, means, width, yerr=spread, capsize=2, label=design_name(design))
    axis.set_xticks(np.arange(len(columns)), columns)
    axis.set_ylabel("main score x100 (mean over seeds)")
    seeds = sorted({run["seed"] for run in runs})
    axis.set_title(f"The five designs of Tang & Yang (2024), seeds {seeds}")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(args, given: set[str] | frozenset = frozenset()) -> dict:
    """The three reports over every run in ``runs/``, labelled with the arguments the runs were made with
    (:func:`recorded_arguments`), not this command's: with ``--report-only`` the run arguments left out
    take the runs' values, and one ``given`` (on the command line) with another value is refused."""
    output_dir = Path(args.output_dir)
    runs = load_runs(output_dir)
    recorded = recorded_arguments(output_dir, runs)
    if recorded is None:
        logger.warning("the runs in %s have no record of the arguments they were made with (written before "
                       "llm-embed-study recorded them): the reports give this command's arguments, unchecked",
                       output_dir / "runs")
        arguments = vars(args)
    else:
        found = argument_differences(run_arguments(args), recorded, sorted(given)) if args.report_only else []
        if found:
            raise ValueError(
                f"--report-only would report the runs in {output_dir / 'runs'} under other arguments than they were "
                f"made with: {'; '.join(found)}. Leave these out (the report takes the runs' own) or train a study "
                "with them in another --output-dir.")
        arguments = {**vars(args), **recorded}
    environment_file = output_dir / "runs" / "environment.json"
    environment = json.loads(environment_file.read_text()) if environment_file.is_file() else {}
    tests = pairwise_tests(runs)
    claims = check_claims(runs, tests)
    report = {"environment": environment, "arguments": arguments,
              "designs": {str(d): dict(zip(("attention", "pooling"), DESIGNS[d])) for d in DESIGNS},
              "summary": {str(d): {k: v[0] for k, v in row.items()} for d, row in summary_table(runs).items()},
              "runs": runs, "tests": tests, "claims": claims}
    (output_dir / "results.json").write_text(json.dumps(report, indent=1))
    markdown = format_markdown(runs, tests, claims, environment)
    (output_dir / "results.md").write_text(markdown)
    if not args.no_plot:
        plot(runs, output_dir / "designs.png")
    print(markdown)
    return report


# ----------------------------------------------------------------------------------------------
# Command line


DESIGN_OPTIONS = ("attention", "pooling")  # set per design (DESIGNS), not by an option

#: the example of ``--help``'s ``--task`` section, in this command's options (no model: it trains its own)
STUDY_TASK_EXAMPLE = """:
  llm-embed-study --task sts:pairs.csv sentence1=q sentence2=d score=label name=Mine \\
      --task classification:train.tsv,test.tsv text=body label=intent --tasks stsb --task-limit 100"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the options' help, the epilog (the ``--task`` syntax) as written. No default is added
    to a flag (``--no-lora``'s stored default True read as "full fine-tuning by default") or to a help
    that already says its default."""

    def _get_help_string(self, action):
        if action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_config_arguments

    parser = argparse.ArgumentParser(description="Train and compare the paper's five designs on one backbone.",
                                     epilog=task_spec_help(STUDY_TASK_EXAMPLE, "--task-limit"),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--backbone", default=None, help="decoder folder or Hub id (default: bundled SmolLM2-135M)")
    parser.add_argument("--data-dir", default="../shared/data",
                        help="the evaluation and training data (layout of shared/data)")
    parser.add_argument("--train-files", nargs="+", default=None,
                        help="triplet JSONL files (default: SNLI dev + test triplets under --data-dir)")
    parser.add_argument("--max-train-rows", type=int, default=None,
                        help="train on the first N rows of the training files (default: all)")
    parser.add_argument("--output-dir", default="study_out",
                        help="where runs/ (one file per design and seed) and the reports are written")
    parser.add_argument("--designs", type=int, nargs="+", default=list(DESIGNS), choices=list(DESIGNS),
                        help="the paper's designs to train (docs/evaluation.md)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per design and seed")
    parser.add_argument("--tasks", nargs="+", default=None, choices=list(TASK_NAMES),
                        help="built-in tasks (files under --data-dir); None: all five, or none with --task")
    parser.add_argument("--task", action="append", nargs="+", default=None, metavar=("KIND:FILES", "KEY=VALUE"),
                        help="a task on your own files, repeatable, e.g. --task sts:pairs.csv score=label (below)")
    parser.add_argument("--task-limit", nargs="+", default=None,
                        help="seeded random subsets for quick or CPU-sized runs: one number for every task, or "
                             f"key=number with keys {', '.join(LIMIT_KEYS)}")
    parser.add_argument("--max-steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="queries per step (each with a positive and a negative; "
                             "the others are in-batch negatives)")
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="peak learning rate (LoRA adapters, or every weight with --no-lora)")
    parser.add_argument("--head-learning-rate", type=float, default=None,
                        help="learning rate of the pooling head (trained from its initialisation while the backbone "
                             "is pretrained) and of an --output-dim projection; a design without either (design 1, "
                             "last token) trains at --learning-rate; None: --learning-rate")
    parser.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="share of --max-steps spent warming up (0: none)")
    parser.add_argument("--no-lora", dest="lora", action="store_false",
                        help="full fine-tuning instead of LoRA (the default trains LoRA adapters and the head)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=32, help="LoRA scaling alpha")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="dropout on the LoRA inputs")
    parser.add_argument("--attn-implementation", default=None,
                        help="the backbone's attention (eager, sdpa, flex_attention; default: transformers' choice)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed-precision training and bf16 embedding")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu forces the CPU")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="texts per encode batch when scoring")
    parser.add_argument("--score-workers", type=int, default=4, help="CPU processes that score while the GPU trains")
    parser.add_argument("--score-threads", type=int, default=2, help="BLAS/OpenMP threads per scoring process")
    parser.add_argument("--save-models", default=None, metavar="DIR",
                        help="keep each trained design as DIR/design{N}_seed{S}: LoRA adapters + head (load with "
                             "llm-embed-evaluate or load_lora), or the whole model with --save-merged / --no-lora")
    parser.add_argument("--save-merged", action="store_true",
                        help="with --save-models: save the merged model (loads through AutoModel; about 525 MiB "
                             "per design for SmolLM2-135M) instead of the adapters")
    parser.add_argument("--no-plot", action="store_true", help="skip designs.png (e.g. no matplotlib on this machine)")
    parser.add_argument("--no-report", action="store_true", help="train and score only; build reports later")
    parser.add_argument("--report-only", action="store_true", help="rebuild the reports from runs/ without training")
    # Every LLMEmbeddingConfig option but the two each design fixes (--designs picks them).
    add_config_arguments(parser, dashes=True, exclude=DESIGN_OPTIONS)
    return parser


#: Options refused below 1 before anything is built: each once failed late (``--eval-batch-size 0``
#: after a whole design trained, ``--score-workers 0`` with Python's bare "max_workers must be greater
#: than 0") or was taken as something else (``--max-train-rows 0``: "the files hold no rows").
AT_LEAST_ONE = ("max_train_rows", "eval_batch_size", "score_workers", "score_threads")


def parse_args(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("learning_rate", "head_learning_rate"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:
            parser.error(f"{_flag(name)} must be a number > 0, got {value}")
    if not 0 <= args.warmup_ratio <= 1:
        parser.error(f"--warmup-ratio must be in [0, 1] (the share of --max-steps spent warming up), got "
                     f"{args.warmup_ratio}")
    if args.max_steps < 1 or args.batch_size < 2:
        parser.error("--max-steps must be >= 1 and --batch-size >= 2 (in-batch negatives need two queries)")
    for name in AT_LEAST_ONE:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"{_flag(name)} must be >= 1, got {value}")
    for name, values in (("designs", args.designs), ("seeds", args.seeds)):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            parser.error(f"--{name} names {' '.join(map(str, repeated))} more than once: each (design, seed) is one "
                         "run, trained once; drop the repeats")
    sizes = [name for name in LORA_SIZES if name in given_arguments(argv)] if not args.lora else []
    if sizes:
        parser.error(f"{' '.join(map(_flag, sizes))} given with --no-lora: these size LoRA adapters, which --no-lora "
                     "does not train (it fine-tunes every weight); drop them, or drop --no-lora")
    try:
        from .lora import check_lora_sizes

        check_lora_sizes(args.lora_r, args.lora_alpha, args.lora_dropout)
    except ValueError as error:
        parser.error(str(error).replace("--lora_", "--lora-"))
    if args.save_merged and not args.save_models:
        parser.error("--save-merged says how to save the models of --save-models DIR; pass --save-models too")
    try:
        args.task_limit = parse_task_limit(args.task_limit)
        parse_task_specs(args.task)  # a malformed --task is a usage error now, not after training
    except (ValueError, TaskSpecError) as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments (``sys.argv`` by default), run the study or rebuild its reports; returns the
    report. The console command runs :func:`cli`, which turns this into an exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.report_only:
        return write_reports(args, given_arguments(argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_study(args)


def cli() -> int:
    """``llm-embed-study``: exit status 0 on success, 1 with a one-line reason on an error
    (see :mod:`llm_embed.cli`)."""
    from .cli import run_console

    return run_console(main, "llm-embed-study")


__all__ = ["DESIGNS", "cli", "main", "parse_args", "run_study", "write_reports"]


if __name__ == "__main__":
    raise SystemExit(cli())
