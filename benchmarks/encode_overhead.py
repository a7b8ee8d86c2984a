"""Fixed cost of ``encode`` around the backbone: encode time minus the raw backbone forward over the
same length-sorted padded batches (ids already on the device), on a tiny backbone where that
difference is almost all wrapper work (tokenization, sorting, padding, host-to-device copies,
pooling, reordering). Also times the parts on their own.

    PYTHONPATH=. python benchmarks/encode_overhead.py --num-texts 2048 --batch-size 64 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import encode_perf as perf

from llm_embed.encoding import pad_batch, tokenize_texts


def best_ms(variants: dict, repeats: int, device: str) -> dict[str, float]:
    """Fastest of ``repeats`` interleaved rounds per variant (after one warm-up): on a shared machine
    interference only adds time, so the minimum is the steadiest estimate of a fixed cost."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(perf.timed(fn, device))
    return {name: round(min(values) * 1e3, 2) for name, values in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-texts", type=int, default=2048, help="STS-B sentences")
    parser.add_argument("--num-docs", type=int, default=128, help="SciFact documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=perf.DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    build = argparse.Namespace(backbone="tiny", device=args.device, dtype="float32", attn="sdpa", tokenizer=None,
                               max_seq_length=512, data_dir=args.data_dir)
    backbone, tokenizer = perf.build_backbone(build)
    model = perf.wrap(backbone, backbone.config.to_dict(), tokenizer, "causal", "last_token", build)
    tokenizer = model.tokenizer
    texts = perf.load_texts(args.data_dir, args.num_texts, args.num_docs)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__, "workloads": {}}
    for name, items in texts.items():
        batches, lengths = perf.padded_batches(model, items, args.batch_size, args.device)
        ids = tokenize_texts(tokenizer, items, 512, True)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        rows = [[ids[i] for i in order[s : s + args.batch_size]] for s in range(0, len(order), args.batch_size)]
        times = best_ms({
            "raw_backbone": perf.raw_forward(backbone, batches),
            "encode": perf.encoder(model, items, args.batch_size),
            "tokenize": lambda items=items: tokenize_texts(tokenizer, items, 512, True),
            "pad_all_batches": lambda rows=rows: [pad_batch(r, tokenizer.pad_token_id, "right") for r in rows],
        }, args.repeats, args.device)
        overhead = times["encode"] - times["raw_backbone"]
        result["workloads"][name] = dict(times, texts=len(items), batches=len(batches), tokens=sum(lengths),
                                         overhead_ms=round(overhead, 2),
                                         overhead_per_batch_ms=round(overhead / len(batches), 3))
        print(name, json.dumps(result["workloads"][name]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
