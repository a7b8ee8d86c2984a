"""Training-step benchmark: the paper's five designs on one backbone and batch, and GradCache vs
the plain loss at equal contrastive batch. Prints a markdown table and writes JSON.

    # CPU, real SmolLM2-135M (bundled):
    python benchmarks/train_step.py --queries 8 --seq-len 32 --steps 2
    # GPU, Qwen2-0.5B-shaped random weights (the paper's second base model), bf16:
    python benchmarks/train_step.py --shape qwen2-0.5b --device cuda --dtype bfloat16 --queries 64 --seq-len 256

One step = forward over queries, positives and one hard negative each, InfoNCE, backward, AdamW
step, full fine-tuning (all parameters trainable). Peak memory is torch.cuda.max_memory_allocated
(GPU only). The GradCache row embeds ``--mini-batch`` texts at a time over the same batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import llm_embed  # noqa: F401
from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel

DESIGNS = [  # (paper model, attention, pooling)
    (1, "causal", "last_token"),
    (2, "causal", "latent_attention"),
    (3, "causal", "multi_layer"),
    (4, "bidirectional", "latent_attention"),
    (5, "bidirectional", "multi_layer"),
]

SHAPES = {
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096),
}


def build(args, attention, pooling, **extra):
    if args.shape == "smollm2":
        from llm_embed.bundled import smollm2_backbone_path

        model = LLMEmbeddingModel.from_backbone(smollm2_backbone_path(), attention=attention, pooling=pooling,
                                                attn_implementation=args.attn, **extra)
    else:
        config = LLMEmbeddingConfig(backbone_config=dict(SHAPES[args.shape]), attention=attention, pooling=pooling,
                                    attn_implementation=args.attn, **extra)
        with torch.device(args.device):
            model = LLMEmbeddingModel(config)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype)).train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    return model


def batch(args, vocab):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(5, vocab, (args.queries, args.seq_len), generator=generator)
    documents = torch.randint(5, vocab, (2 * args.queries, args.seq_len), generator=generator)
    ones = lambda t: torch.ones_like(t)
    return {k: v.to(args.device) for k, v in dict(query_input_ids=queries, query_attention_mask=ones(queries),
                                                  document_input_ids=documents,
                                                  document_attention_mask=ones(documents)).items()}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args, model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = batch(args, model.config.backbone_config.vocab_size)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        sync(args.device)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    texts = 3 * args.queries
    step_time = sum(times) / len(times)
    return {
        "step_s": step_time,
        "tokens_per_s": texts * args.seq_len / step_time,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
        "losses": losses,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2", choices=["smollm2", *SHAPES])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--queries", type=int, default=8, help="queries per step (each with 1 positive, 1 negative)")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--mini-batch", type=int, default=None, help="GradCache mini-batch (default: queries // 4)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    mini_batch = args.mini_batch or max(1, args.queries // 4)

    rows = []
    for paper_model, attention, pooling in DESIGNS:
        torch.manual_seed(0)
        model = build(args, attention, pooling)
        result = measure(args, model)
        head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
        rows.append(dict(name=f"model {paper_model}: {attention} + {pooling}", head_params=head, **result))
        print(rows[-1]["name"], f"{result['step_s']:.3f} s/step", flush=True)
        del model
    torch.manual_seed(0)
    model = build(args, "bidirectional", "multi_layer", loss_mini_batch_size=mini_batch)
    result = measure(args, model)
    rows.append(dict(name=f"model 5 with GradCache (mini-batch {mini_batch})", head_params=rows[-1]["head_params"],
                     **result))
    del model

    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"\n{args.shape}, {args.dtype}, {args.attn}, {args.queries} queries x 3 texts x {args.seq_len} tokens, "
          f"device {device}, torch {torch.__version__}, transformers {__import__('transformers').__version__}\n")
    print("| design | head params | s/step | tokens/s | peak GiB | vs model 1 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "n/a"
        print(f"| {row['name']} | {row['head_params']:,} | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
              f"{peak} | {row['step_s'] / rows[0]['step_s']:.2f}x |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "device": device, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
