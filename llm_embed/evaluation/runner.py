"""Run tasks on a model, print a table, write JSON with per-item scores: ``llm-embed-evaluate``.

    llm-embed-evaluate path/to/model --data-dir ../shared/data --tasks stsb sick scifact --output results.json
    llm-embed-evaluate path/to/model --task sts:pairs.csv score=label --task classification:train.csv,test.csv

(``.venv/bin/llm-embed-evaluate`` unless the virtualenv is activated.) Built-in tasks (``--tasks``,
files at fixed paths under ``--data-dir``) and tasks on your own files (``--task``, parsed by
:mod:`.task_specs`) run in one report. The model is a saved llm_embed folder or Hub id (loaded with
``AutoModel``) or a LoRA artifact saved by ``llm-embed-study --save-models`` (adapters + head and
:data:`LORA_BASE_FILE`, which names the backbone and design to rebuild: see :func:`load_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..lora import LORA_BASE_FILE
from .task_specs import TASK_SPEC_HELP, TaskSpecError, build_tasks, check_unique_names, parse_task_specs
from .tasks import (
    LIMIT_KEYS,
    TASK_FILES,
    SmallSampleWarning,
    TaskResult,
    check_prompts,
    default_tasks,
    parse_task_limit,
)

__all__ = ["LORA_BASE_FILE", "cli", "evaluate", "format_table", "load_model", "main"]

DATA_HELP = """\
The data folder (--data-dir) holds one folder per task, at fixed paths. Nothing is downloaded:
the files are plain copies of public data sets (in this project: ../shared/data, whose README
gives rows, licenses and sources; elsewhere, fetch them yourself, see docs/evaluation.md):

{layout}

Formats: STS-B TSV without header (genre, file, year, id, score, sentence1, sentence2); SICK TSV
with header (pair_ID, sentence_A, sentence_B, relatedness_score, ...); SciFact in the BEIR layout
(corpus.jsonl {{_id, title, text}}, queries.jsonl {{_id, text}}, qrels TSV query-id, corpus-id,
score with a header); Banking77 CSV text,category; StackOverflow one title a line and its label on
the same line of StackOverflow_gnd.txt. A --limit too small for a task's metric is refused (or
warned about when the score is merely noisy); see docs/evaluation.md.
"""


def data_layout() -> str:
    return "\n".join(f"  {name:<14} {', '.join(files)}\n  {'':<14} from: {source}"
                     for name, (files, source) in TASK_FILES.items())


def is_lora_artifact(name_or_path) -> bool:
    """Whether the model is a LoRA artifact (adapters + head + :data:`LORA_BASE_FILE`), the one kind
    of model that ``backbone`` applies to."""
    return (Path(name_or_path) / LORA_BASE_FILE).is_file()


def load_model(name_or_path, backbone: str | None = None):
    """The model to evaluate: a saved llm_embed model (folder or Hub id) through ``AutoModel``, or a
    LoRA artifact (adapters + trained head, :data:`LORA_BASE_FILE`) as a plain model with the
    adapters merged, exactly as the study scored it: the base is rebuilt with
    ``LLMEmbeddingModel.from_backbone`` from the recorded backbone and design (``backbone``
    overrides where the decoder is, e.g. on another machine), the adapters put on with
    :func:`~llm_embed.lora.load_lora` and merged with :func:`~llm_embed.lora.merge_lora`."""
    folder = Path(name_or_path)
    if is_lora_artifact(name_or_path):
        from ..configuration_llm_embed import options_for_head
        from ..lora import load_lora, merge_lora
        from ..modeling_llm_embed import LLMEmbeddingModel

        base = json.loads((folder / LORA_BASE_FILE).read_text(encoding="utf-8"))
        decoder = backbone or base["backbone"]
        if decoder is None:  # the study's default: the bundled SmolLM2-135M
            from ..bundled import smollm2_backbone_path

            decoder = smollm2_backbone_path()
        elif backbone is None and not os.path.exists(decoder) and os.path.isabs(decoder):
            raise FileNotFoundError(f"{folder / LORA_BASE_FILE} names the backbone {decoder}, which does not exist on "
                                    "this machine (moved, or written elsewhere): pass --backbone (load_model(..., "
                                    "backbone=...)) with where that decoder is here")
        # options_for_head: an earlier study recorded every design's head options for every design
        model = LLMEmbeddingModel.from_backbone(decoder, base["attention"], base["pooling"],
                                                attn_implementation=base["attn_implementation"],
                                                **options_for_head(base["pooling"], base["config"]))
        return merge_lora(load_lora(model, str(folder))).eval()
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise ValueError(f"{name_or_path} holds LoRA adapters but no {LORA_BASE_FILE} naming the backbone and design "
                         "they were trained on; load them in Python with load_lora(LLMEmbeddingModel.from_backbone("
                         "decoder, attention=..., pooling=...), folder) (docs/training.md), or evaluate the merged "
                         "model")
    if backbone is not None:
        raise ValueError(f"backbone={backbone!r} is only for a LoRA artifact (a folder with {LORA_BASE_FILE}); "
                         f"{name_or_path} is a saved model that holds its backbone's weights: drop backbone")
    from ..modeling_llm_embed import LLMEmbeddingModel

    # Not AutoModel: a plain decoder's folder would load as that decoder and fail later on a missing
    # attribute; LLMEmbeddingModel refuses it (and a missing folder, a mistyped path) by name.
    return LLMEmbeddingModel.from_pretrained(name_or_path)


def evaluate(model, tasks, batch_size: int = 32, show_progress_bar: bool = True) -> list[TaskResult]:
    """Run ``tasks`` on ``model`` in order. Every prompt name the tasks give is checked against the
    model's prompts first (:func:`~.tasks.check_prompts`), so a mistyped one fails before the first
    task spends its time."""
    check_prompts(model, tasks)
    results = []
    for task in tqdm(tasks, desc="Tasks", disable=not show_progress_bar):
        start = time.perf_counter()
        result = task.evaluate(model, batch_size=batch_size, show_progress_bar=show_progress_bar)
        result.scores["seconds"] = time.perf_counter() - start
        results.append(result)
    return results


def format_table(results: list[TaskResult]) -> str:
    """A markdown table of the main scores; a task whose subset is small for its metric gets a ``*``
    and its warnings below the table."""
    lines = ["| task | category | metric | score |", "|---|---|---|---|"]
    lines += [f"| {r.task} | {r.category} | {r.main_metric} | {r.main_score:.2f}{' *' if r.warnings else ''} |"
              for r in results]
    notes = [f"* {r.task}: {warning}" for r in results for warning in r.warnings]
    if notes:
        lines += ["", "Small subsets: these scores are noisy or biased (see docs/evaluation.md):", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[TaskResult]:
    """Parse the arguments (``sys.argv`` by default), evaluate, print the table; returns the results.
    The console command runs :func:`cli`, which turns this into an exit status."""
    parser = argparse.ArgumentParser(
        description="Evaluate a saved llm_embed model on local data files: STS-B and SICK (STS),\n"
                    "SciFact (retrieval), Banking77 (classification), StackOverflow (clustering),\n"
                    "and tasks on your own CSV/TSV/JSONL files (--task).",
        epilog=DATA_HELP.format(layout=data_layout()) + "\n" + TASK_SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # nargs="?": a model written after --task lands in the task's words, and argparse's own error would
    # only say the model is missing (checked below, naming where it went)
    parser.add_argument("model", nargs="?", help="saved model folder or Hub id (loaded with AutoModel), or a LoRA "
                                                 f"artifact of llm-embed-study --save-models (adapters + head + "
                                                 f"{LORA_BASE_FILE})")
    parser.add_argument("--data-dir", default="../shared/data",
                        help="folder holding the task files (layout below); a relative path is taken from the "
                             "current folder (default: %(default)s, the project's shared data when run from the "
                             "repository root)")
    parser.add_argument("--tasks", nargs="+", default=None, choices=list(TASK_FILES), metavar="TASK",
                        help=f"built-in tasks to run, among {' '.join(TASK_FILES)} (default: all five); with --task, "
                             "only those named here")
    parser.add_argument("--task", action="append", nargs="+", default=None, metavar=("KIND:FILES", "KEY=VALUE"),
                        help="a task on your own files, repeatable: e.g. --task sts:pairs.csv score=label "
                             "(kinds, files and keys below)")
    parser.add_argument("--limit", nargs="+", default=None,
                        help="seeded random subsets for a quick run: one number for every task (SciFact's corpus and "
                             "Banking77's training set at ten times it; the corpus cap keeps the first N documents "
                             "and every relevant one), key=number pairs (only the keys named), or a number then "
                             f"key=number pairs; keys: {', '.join(LIMIT_KEYS)} (default: whole test sets)")
    parser.add_argument("--backbone", default=None,
                        help=f"for a LoRA artifact: the decoder its adapters were trained on (default: the one its "
                             f"{LORA_BASE_FILE} names)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per encode batch (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="JSON file for scores and per-item scores (default: none, the table only)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    args = parser.parse_args(argv)
    if args.model is None:
        stray = [word for words in args.task or [] for word in words[1:] if "=" not in word]
        parser.error(f"the model {stray[-1]!r} was read as a word of --task: put the model before --task "
                     f"(llm-embed-evaluate MODEL --task ...)" if stray else "the following arguments are required: "
                     "model")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive number of texts, got {args.batch_size}")
    try:
        args.limit = parse_task_limit(args.limit)
        specs = parse_task_specs(args.task)
    except (ValueError, TaskSpecError) as error:
        parser.error(str(error))
    builtin = args.tasks if args.tasks is not None else ([] if specs else list(TASK_FILES))
    if args.limit is not None and not builtin:
        parser.error("--limit caps the built-in tasks only, and none runs: for a task on your own files use its "
                     "limit= key, e.g. --task sts:pairs.csv limit=100")

    duplicates = sorted({name for name in builtin if builtin.count(name) > 1})
    if duplicates:
        parser.error(f"--tasks lists {', '.join(duplicates)} more than once; name each task once")
    if builtin and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such folder (looked at {Path(args.data_dir).resolve()}, "
                     f"relative to the current folder {Path.cwd()}); pass the folder that holds the task data "
                     "(stsb/, sick/, scifact/, banking77/, clustering_stackoverflow/: see --help; nothing is "
                     "downloaded)")
    if args.output and Path(args.output).is_dir():
        parser.error(f"--output {args.output} is a folder; pass a file name for the JSON, e.g. "
                     f"{Path(args.output) / 'results.json'} (checked now, before the evaluation runs)")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        parser.error(f"--output {args.output}: its folder does not exist; create it first (checked now, before the "
                     "evaluation runs)")
    if args.backbone is not None and not is_lora_artifact(args.model):
        parser.error(f"--backbone is only for a LoRA artifact (a folder with {LORA_BASE_FILE}); {args.model} is a "
                     "saved model that holds its backbone's weights: drop --backbone")
    # the task files first: a missing or malformed one, or a subset too small for its metric, fails before the
    # model loads; small-subset warnings are printed now and again under the table
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SmallSampleWarning)
        tasks = (default_tasks(args.data_dir, builtin, args.limit) if builtin else []) + build_tasks(specs)
    check_unique_names(tasks)
    for warning in caught:
        if issubclass(warning.category, SmallSampleWarning):
            print(f"{parser.prog}: warning: {warning.message}", file=sys.stderr, flush=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)

    model = load_model(args.model, args.backbone)
    results = evaluate(model, tasks, args.batch_size, show_progress_bar=not args.no_progress)
    print(format_table(results))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "backbone": args.backbone, "limit": args.limit,
                       "tasks": [spec.text for spec in specs],
                       "results": [r.to_dict() for r in results]}, handle)
    return results


def cli() -> int:
    """``llm-embed-evaluate``: exit status 0 on success, 1 with a one-line reason on an error
    (see :mod:`llm_embed.cli`)."""
    from ..cli import run_console

    return run_console(main, "llm-embed-evaluate")


if __name__ == "__main__":
    sys.exit(cli())
