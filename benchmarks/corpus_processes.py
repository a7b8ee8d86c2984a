"""``llm-embed-encode`` on one process against several (issue 14): tokens/s on SciFact documents.

    PYTHONPATH=. .venv/bin/python benchmarks/corpus_processes.py --docs 120 --json out.json

Saves the bundled SmolLM2 (causal, mean pooling) once, writes the first ``--docs`` SciFact documents
to a JSONL, then runs ``python -m llm_embed.corpus`` as 1 process with all cores and as N processes
(``RANK`` / ``WORLD_SIZE``, as torchrun sets them) with ``cores / N`` torch threads each, into fresh
folders. Reports wall seconds and tokens/s of each (the tokens the model sees, summed over ranks) and
checks that both give the same embeddings (allclose: thread counts change float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(model: Path, corpus: Path, output: Path, world_size: int, threads: int, batch_size: int,
        device: str = "cpu", dtype: str = "float32") -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "WORLD_SIZE": str(world_size)}
    gpus = max(1, torch.cuda.device_count()) if device == "cuda" else 1

    def command(rank: int) -> list[str]:
        return [sys.executable, "-m", "llm_embed.corpus", str(model), str(corpus), "--output-dir", str(output),
                "--id-field", "_id", "--title-field", "title", "--prompt-name", "document", "--shard-size", "16",
                "--batch-size", str(batch_size), "--dtype", dtype,
                "--device", f"cuda:{rank % gpus}" if device == "cuda" else device]

    start = time.perf_counter()
    processes = [subprocess.Popen(command(rank), env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for rank in range(world_size)]
    outputs = [process.communicate() for process in processes]
    seconds = time.perf_counter() - start
    for process, (_out, err) in zip(processes, outputs):
        if process.returncode != 0:
            raise SystemExit(f"llm-embed-encode failed ({process.returncode}):\n{err[-3000:]}")
    tokens = sum(int(m.group(1)) for out, _ in outputs for m in re.finditer(r"documents, (\d+) tokens", out))
    return {"processes": world_size, "threads_each": threads, "seconds": round(seconds, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (process r on GPU r %% GPUs)")
    parser.add_argument("--dtype", default="float32", help="float32 on CPU; bfloat16 on a GPU")
    args = parser.parse_args(argv)
    from llm_embed import LLMEmbeddingModel
    from llm_embed.bundled import smollm2_backbone_path
    from llm_embed.corpus import load_shards

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = LLMEmbeddingModel.from_backbone(smollm2_backbone_path(), attention="causal", pooling="mean")
        model.save_pretrained(scratch / "model")
        del model
        with open(args.data_dir / "scifact" / "corpus.jsonl", encoding="utf-8") as handle:
            lines = [line for _, line in zip(range(args.docs), handle)]
        corpus = scratch / "corpus.jsonl"
        corpus.write_text("".join(lines), encoding="utf-8")
        one = run(scratch / "model", corpus, scratch / "one", 1, cores, args.batch_size, args.device, args.dtype)
        print(f"1 process x {cores} threads: {one}", flush=True)
        many = run(scratch / "model", corpus, scratch / "many", args.processes, max(1, cores // args.processes),
                   args.batch_size, args.device, args.dtype)
        print(f"{args.processes} processes: {many}", flush=True)
        ids_one, vectors_one = load_shards(scratch / "one")
        ids_many, vectors_many = load_shards(scratch / "many")
        assert ids_one == ids_many
        difference = float(np.abs(vectors_one - vectors_many).max())
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "machine": f"{platform.processor() or platform.machine()}, {cores} CPUs", "docs": args.docs,
              "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "dtype": args.dtype,
              "one_process": one, "several_processes": many,
              "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 3), "max_abs_difference": difference}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
