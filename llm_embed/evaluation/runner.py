"""Run tasks on a model, print a table, write JSON with per-item scores: ``llm-embed-evaluate``.

    llm-embed-evaluate path/to/model --data-dir ../shared/data --tasks stsb sick scifact --output results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .tasks import LIMIT_KEYS, TaskResult, default_tasks, parse_task_limit


def evaluate(model, tasks, batch_size: int = 32, show_progress_bar: bool = True) -> list[TaskResult]:
    results = []
    for task in tqdm(tasks, desc="Tasks", disable=not show_progress_bar):
        start = time.perf_counter()
        result = task.evaluate(model, batch_size=batch_size, show_progress_bar=show_progress_bar)
        result.scores["seconds"] = time.perf_counter() - start
        results.append(result)
    return results


def format_table(results: list[TaskResult]) -> str:
    lines = ["| task | category | metric | score |", "|---|---|---|---|"]
    lines += [f"| {r.task} | {r.category} | {r.main_metric} | {r.main_score:.2f} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[TaskResult]:
    """Parse the arguments (``sys.argv`` by default), evaluate, print the table; returns the results.
    The console command runs :func:`cli`, which turns this into an exit status."""
    parser = argparse.ArgumentParser(description="Evaluate a saved llm_embed model on local data.")
    parser.add_argument("model", help="saved model folder or Hub id (loaded with AutoModel)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--tasks", nargs="+", default=None, help="stsb sick scifact banking77 stackoverflow (default: all)")
    parser.add_argument("--limit", nargs="+", default=None,
                        help="seeded random subsets for a quick run: one number for every task, or key=number with "
                             f"keys {', '.join(LIMIT_KEYS)}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=None, help="JSON file for scores and per-item scores")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.limit = parse_task_limit(args.limit)
    except ValueError as error:
        parser.error(str(error))

    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder; pass the folder that holds the task data "
                     "(stsb/, sick/, scifact/, banking77/, clustering_stackoverflow/)")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        parser.error(f"--output {args.output}: its folder does not exist; create it first (checked now, before the "
                     "evaluation runs)")
    # the task files first: a missing or malformed one fails before the model loads
    tasks = default_tasks(args.data_dir, args.tasks, args.limit)

    from transformers import AutoModel

    import llm_embed  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(args.model)
    results = evaluate(model, tasks, args.batch_size, show_progress_bar=not args.no_progress)
    print(format_table(results))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "limit": args.limit, "results": [r.to_dict() for r in results]}, handle)
    return results


def cli() -> int:
    """``llm-embed-evaluate``: exit status 0 on success, 1 with a one-line reason on an error (see :mod:`llm_embed.cli`)."""
    from ..cli import run_console

    return run_console(main, "llm-embed-evaluate")


if __name__ == "__main__":
    sys.exit(cli())
