"""Controlled CPU runs of the trainable heads (issue 12): same data, steps, seed; one thing varied at a time.

Each variant is a study design (``llm_embed.study.DESIGNS``) plus ``llm-embed-study`` options that
differ from the common recipe. Every variant is trained with the study's own training function
(LoRA on the backbone, the head in full, InfoNCE with in-batch and one hard negative), then scored
on a seeded STS-B subset and a SciFact subset. The loss curve (every ``logging_steps``) and the
scores go to one JSON file; a markdown table is printed. Variants already in the output file are
not run again, so a cut-off sweep resumes.

    .venv/bin/python benchmarks/head_training.py --data-dir ../shared/data --out docs/benchmarks/head_training_cpu.json

``--steps 0`` scores the untrained models (the heads' starting point). ``--variants`` picks a subset.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llm_embed.bundled import smollm2_backbone_path
from llm_embed.evaluation.tasks import default_tasks, parse_task_limit
from llm_embed.study import build_model, parse_args, read_triplets, train_design

# name -> (design, options that differ from the common recipe). "paper" = the head as in the paper
# (random projection at step 0, pooling_residual false), "residual" = the head that starts at its baseline.
VARIANTS = {  # in the order they run: the questions about design 3 first
    "d3-paper": (3, ["--pooling-residual", "false"]),
    "d3-residual": (3, []),
    "d3-paper-hlr1e-3": (3, ["--pooling-residual", "false", "--head-learning-rate", "1e-3"]),
    "d3-residual-hlr1e-3": (3, ["--head-learning-rate", "1e-3"]),
    "d3-residual-mean": (3, ["--layer-reduction", "mean"]),
    "d2-paper": (2, ["--pooling-residual", "false"]),
    "d2-residual": (2, []),
    "d5-residual": (5, []),
    "d3-residual-width576": (3, ["--pooling-head-dim", "72"]),
    "d5-paper": (5, ["--pooling-residual", "false"]),
    "d3-paper-hlr1e-2": (3, ["--pooling-residual", "false", "--head-learning-rate", "1e-2"]),
    "d1": (1, []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", required=True, help="JSON file of results (read first: variants in it are skipped)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--limit", nargs="+", default=["stsb=500", "scifact=100", "scifact_corpus=200"])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast: twice fp32's speed on a CPU with AVX512-BF16, about 20 times slower "
                             "on one without")
    args = parser.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.setdefault("setup", {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "steps": args.steps, "batch_size": args.batch_size, "limit": args.limit,
        "command": "benchmarks/head_training.py --steps {} --batch-size {} --limit {}".format(
            args.steps, args.batch_size, " ".join(args.limit)),
    })
    runs = report.setdefault("runs", {})
    tasks = default_tasks(args.data_dir, ["stsb", "scifact"], parse_task_limit(args.limit))
    train_file = str(Path(args.data_dir) / "nli_triplets" / "snli_dev_triplets.jsonl")
    rows = args.max_train_rows or max(args.batch_size * max(args.steps, 1), args.batch_size)
    train_data = read_triplets([train_file], rows)
    for name in args.variants:
        if name in runs:
            print(f"{name}: already in {out}, skipped")
            continue
        design, options = VARIANTS[name]
        study_args = parse_args(["--data-dir", args.data_dir, "--max-steps", str(max(args.steps, 1)),
                                 "--batch-size", str(args.batch_size), "--max-seq-length", "64", "--device", "cpu",
                                 *(["--bf16"] if args.bf16 else []), *(["--backbone", args.backbone]
                                                                       if args.backbone else []), *options])
        start = time.perf_counter()
        backbone = args.backbone or smollm2_backbone_path()
        if args.steps == 0:
            torch.manual_seed(0)
            model, log = build_model(study_args, design, backbone), {"losses": []}
        else:
            model, log = train_design(study_args, design, 0, backbone, train_data)
        train_seconds = time.perf_counter() - start
        model.eval()
        if args.bf16:
            model.to(torch.bfloat16)
        scores = {task.name: round(task.evaluate(model, batch_size=64).main_score, 2) for task in tasks}
        runs[name] = {"design": design, "options": options, "losses": log["losses"], "scores": scores,
                      "train_seconds": round(train_seconds, 1),
                      "eval_seconds": round(time.perf_counter() - start - train_seconds, 1)}
        print(f"{name}: {scores}, loss {log['losses'][:1]} -> {log['losses'][-1:]}, "
              f"{train_seconds:.0f}s train", flush=True)
        out.write_text(json.dumps(report, indent=1))
        del model
    print("\n| variant | design | options | loss first -> last | " + " | ".join(t.name for t in tasks) + " |")
    print("|---|---|---|---|" + "---|" * len(tasks))
    for name, run in runs.items():
        losses = run["losses"]
        curve = f"{losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "untrained"
        print(f"| {name} | {run['design']} | {' '.join(run['options']) or '(defaults)'} | {curve} | "
              + " | ".join(f"{run['scores'][t.name]:.2f}" for t in tasks) + " |")


if __name__ == "__main__":
    main()
