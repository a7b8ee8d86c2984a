"""Untrained per-layer probe: how good is each layer's reduced vector as an embedding, before any training?

Answers two questions of issue 12 about the multi-layer head (designs 3 and 5) without training:

- which per-layer reduction carries signal in each attention mode (``last_token`` vs ``mean``,
  layer by layer: do early layers' last-token states of a causal model mean anything?);
- what an untrained head should start from: the last layer's reduction, or the mean over layers
  of the per-layer reductions (the baseline a zero-initialised multi-layer head reproduces).

For each attention mode and reduction it embeds the STS-B test pairs (and a SciFact subset) once,
keeping every layer's reduced vector, then scores every layer alone, the mean over all layers and
the mean over the last half. Prints one JSON object and, with ``--out``, writes it.

    .venv/bin/python benchmarks/layer_probe.py --data-dir ../shared/data --out docs/benchmarks/layer_probe_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch import nn

from llm_embed import LLMEmbeddingModel
from llm_embed.evaluation.tasks import default_tasks


class AllLayers(nn.Module):
    """Stands in for the multi-layer head: returns every layer's reduced vector, flattened."""

    needs_layer_states = True

    def forward(self, token_states, attention_mask, layer_states=None):
        return layer_states.flatten(1)


def per_layer_scores(task, embeddings: dict, num_layers: int) -> dict:
    split = {key: value.reshape(len(value), num_layers, -1) for key, value in embeddings.items()}
    scores = {}
    for layer in range(num_layers):
        scores[f"layer{layer + 1}"] = task.score({k: v[:, layer] for k, v in split.items()}).main_score
    scores["mean_all_layers"] = task.score({k: v.mean(axis=1) for k, v in split.items()}).main_score
    half = num_layers // 2
    scores["mean_last_half"] = task.score({k: v[:, half:].mean(axis=1) for k, v in split.items()}).main_score
    # Layers' states differ in scale by orders of magnitude; the mean of unit vectors weighs them equally.
    unit = {k: (v / np.linalg.norm(v, axis=-1, keepdims=True)).mean(axis=1) for k, v in split.items()}
    scores["mean_all_layers_unit"] = task.score(unit).main_score
    norms = np.linalg.norm(next(iter(split.values())), axis=-1).mean(axis=0)
    return {"scores": scores, "mean_norm_per_layer": [round(float(n), 2) for n in norms]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--backbone", default=None, help="decoder folder (default: the bundled SmolLM2-135M)")
    parser.add_argument("--tasks", nargs="+", default=["stsb", "scifact"])
    parser.add_argument("--limit", nargs="+", default=["stsb=1379", "scifact=100", "scifact_corpus=400"])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from llm_embed.evaluation.tasks import parse_task_limit

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone = args.backbone
    if backbone is None:
        from llm_embed.bundled import smollm2_backbone_path

        backbone = smollm2_backbone_path()
    tasks = default_tasks(args.data_dir, args.tasks, parse_task_limit(args.limit))
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "command": "benchmarks/layer_probe.py " + " ".join(f"--limit {' '.join(args.limit)}".split()),
              "results": {}}
    for attention in ("causal", "bidirectional"):
        for reduction in ("last_token", "mean"):
            model = LLMEmbeddingModel.from_backbone(backbone, attention=attention, pooling="multi_layer",
                                                    layer_reduction=reduction, normalize=False,
                                                    max_seq_length=args.max_seq_length)
            model.pooler = AllLayers()
            num_layers = model.config.backbone_num_layers
            start = time.perf_counter()
            for task in tasks:
                embeddings = task.embed(model, batch_size=32)
                result = per_layer_scores(task, embeddings, num_layers)
                report["results"][f"{attention}/{reduction}/{task.name}"] = result
                best = max((v, k) for k, v in result["scores"].items() if k.startswith("layer"))
                scores = result["scores"]
                print(f"{attention:13s} {reduction:10s} {task.name:8s} last layer "
                      f"{scores[f'layer{num_layers}']:6.2f}  mean over layers "
                      f"{scores['mean_all_layers']:6.2f} (unit {scores['mean_all_layers_unit']:6.2f})"
                      f"  best {best[1]} {best[0]:6.2f}  ({time.perf_counter() - start:.0f}s)", flush=True)
            del model
    print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
