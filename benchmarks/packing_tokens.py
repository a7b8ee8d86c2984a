"""Token slots the backbone runs on for the GPU benchmark's workloads: padded vs packed (a count, no model).

    PYTHONPATH=. python benchmarks/packing_tokens.py                      # the benchmark's trained BPE
    PYTHONPATH=. python benchmarks/packing_tokens.py --tokenizer smollm2  # SmolLM2's tokenizer

Workloads as in ``benchmarks/encode_perf.py`` on CUDA: the first 2,048 STS-B test sentences and 256
SciFact documents, tokenized as ``encode`` does (EOS appended, truncated at ``--max-seq-length``),
batch size 64. Schemes:

- ``padded (characters)``: sentence-transformers' batches, texts sorted by character count;
- ``padded (tokens)``: ``encode`` without packing, texts sorted by token count;
- ``packed per batch``: the previous packing: each padded batch packed first-fit decreasing into rows
  as long as its longest text;
- ``packed per call``: ``plan_packed_batches`` (flex / dense mode): the whole call first-fit
  decreasing into rows of the call's longest text, ``batch_size`` rows per forward batch;
- flash mode has no padding at all (real tokens), batched by the same token budget;
- ``... in small pieces``: the same, each piece of the call on its own, pieces of ``2 x batch_size``
  texts, then twice as large (``encoding.piece_bounds``), as ``encode`` cuts a call that packs so the
  device starts early. ``encode`` pads a call in pieces of 4,096 texts instead (the whole call here):
  sorted within small pieces, padded batches would run on 10-13 % more slots.

A slot is one token position the backbone's linear layers process (rows x row length); ``unpacked``
is the largest padded layout a packed batch hands the pooling heads, over its token budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encode_perf import DEFAULT_DATA, SHAPES, load_texts, trained_tokenizer

from llm_embed.encoding import FIRST_PIECE_BATCHES, piece_bounds, tokenize_texts
from llm_embed.packing import first_fit_decreasing, plan_packed_batches


def count(texts: list[str], lengths: list[int], batch_size: int) -> dict:
    """Token slots per scheme (see the module docstring) for one workload."""
    def padded(order):
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches), len(batches)

    by_tokens = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    by_characters = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    per_batch = 0
    for start in range(0, len(by_tokens), batch_size):
        batch = [lengths[i] for i in by_tokens[start : start + batch_size]]
        per_batch += len(first_fit_decreasing(batch, max(batch))) * max(batch)
    plans = plan_packed_batches(lengths, batch_size, "flex")
    row_length = plans[0].row_length
    rows = sum(len(plan.row_texts) for plan in plans)
    unpacked = max(len(p.texts) * max(lengths[i] for i in p.texts) for p in plans) / (batch_size * row_length)
    flash = plan_packed_batches(lengths, batch_size, "flash")
    pieces = piece_bounds(len(lengths), batch_size, FIRST_PIECE_BATCHES * batch_size)
    padded_pieces = [padded(sorted(range(a, b), key=lambda i: -lengths[i])) for a, b in pieces]
    packed_pieces = [plan_packed_batches(lengths[a:b], batch_size, "flex") for a, b in pieces]
    return {
        "texts": len(lengths), "real": sum(lengths), "longest": max(lengths),
        "padded_characters": padded(by_characters), "padded_tokens": padded(by_tokens),
        "packed_per_batch": (per_batch, len(range(0, len(lengths), batch_size))),
        "packed_per_call": (rows * row_length, len(plans)), "rows": rows, "row_length": row_length,
        "rows_per_batch": [len(plan.row_texts) for plan in plans], "max_unpacked_over_budget": unpacked,
        "flash": (sum(lengths), len(flash)),
        "pieces": [b - a for a, b in pieces],
        "padded_tokens_small_pieces": tuple(map(sum, zip(*padded_pieces))),
        "packed_per_call_small_pieces": (sum(len(p.row_texts) * p.row_length for ps in packed_pieces for p in ps),
                                         sum(map(len, packed_pieces))),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tokenizer", default="train", help="train (the benchmark's BPE, Mistral-7B shape's vocab) "
                                                               "or smollm2")
    parser.add_argument("--num-texts", type=int, default=2048)
    parser.add_argument("--num-docs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args(argv)
    if args.tokenizer == "smollm2":
        from transformers import AutoTokenizer

        from llm_embed.bundled import smollm2_backbone_path

        tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_path())
    else:
        tokenizer = trained_tokenizer(args.data_dir, SHAPES["mistral7b-shape"]["vocab_size"])
    results = {}
    for name, texts in load_texts(args.data_dir, args.num_texts, args.num_docs).items():
        lengths = [len(row) for row in tokenize_texts(tokenizer, texts, args.max_seq_length, append_eos=True)]
        results[name] = count(texts, lengths, args.batch_size)
    print(f"tokenizer {args.tokenizer}, batch {args.batch_size}, max {args.max_seq_length} tokens\n")
    print("| workload | scheme | token slots | over real tokens | forward batches |")
    print("|---|---|---|---|---|")
    labels = {"padded_characters": "padded, sorted by characters (sentence-transformers)",
              "padded_tokens": "padded, sorted by tokens (encode, packing off)",
              "packed_per_batch": "packed per batch (previous packing)",
              "packed_per_call": "packed per call (rows of the longest text)",
              "flash": "packed, flash varlen (no padding)",
              "padded_tokens_small_pieces": "padded, sorted by tokens within small pieces (not used)",
              "packed_per_call_small_pieces": "packed per call, in small pieces (encode when it packs)"}
    for name, r in results.items():
        print(f"| {name} ({r['texts']} texts, {r['real']:,} tokens, max {r['longest']}) | real tokens | "
              f"{r['real']:,} | 1.000 | |")
        for key, label in labels.items():
            slots, batches = r[key]
            print(f"| | {label} | {slots:,} | {slots / r['real']:.3f} | {batches} |")
    print()
    for name, r in results.items():
        saving = 1 - r["packed_per_call"][0] / r["padded_tokens"][0]
        print(f"{name}: per-call packing {r['rows']} rows of {r['row_length']} (rows per batch "
              f"{r['rows_per_batch']}), {saving:.1%} fewer slots than padded (tokens); largest unpacked "
              f"layout {r['max_unpacked_over_budget']:.2f} x the token budget")
        padded_cost = r["padded_tokens_small_pieces"][0] / r["padded_tokens"][0] - 1
        packed_cost = r["packed_per_call_small_pieces"][0] / r["packed_per_call"][0] - 1
        print(f"{name}: small pieces {r['pieces']}: padded {padded_cost:+.1%}, packed {packed_cost:+.1%} slots "
              "against the whole call")
    return results


if __name__ == "__main__":
    main()
