"""The main job: a real embedding model from the bundled SmolLM2-135M backbone, end to end.

Bidirectional attention + multi-layers trainable pooling (the paper's model 5, the default design):
rank a small corpus for a query, fine-tune on 512 SNLI triplets shipped in ``examples/data/`` with
the transformers ``Trainer`` (contrastive InfoNCE loss), rank again, save, reload through
``AutoModel`` and check the reloaded model gives identical embeddings.

    .venv/bin/python examples/quickstart.py [--steps 16] [--attention causal] [--pooling mean] [--out DIR]

About three minutes on two idle CPU cores (16 steps of about 8 s; ``--steps 0`` skips the fine-
tune). The saved model is about 525 MiB (135M parameters in fp32). Without ``--out`` it goes to a
temporary folder that is deleted when the script ends; with ``--out DIR`` it is kept there (the
script says where and how big). The bundled backbone is converted once into ``~/.cache/llm_embed/``
(about 517 MiB, about 40 s the first time) and reused by later runs.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, TrainingArguments
from transformers.trainer_callback import PrinterCallback

import llm_embed  # noqa: F401  (registers the Auto classes)
from llm_embed import LLMEmbeddingModel
from llm_embed.bundled import smollm2_backbone_path
from llm_embed.data import ContrastiveDataCollator, TripletDataset
from llm_embed.optimization import EmbeddingTrainer

CORPUS = [
    "To reset your card PIN, open the app, choose Cards, then Security, then Change PIN.",
    "Our branches are open from 9am to 5pm on weekdays and until noon on Saturdays.",
    "If your card is lost or stolen, freeze it immediately in the app and order a replacement.",
    "International transfers usually arrive within two business days.",
    "The Eiffel Tower is 330 metres tall and stands in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]
QUERY = "how do I reset my card?"
TRIPLETS = Path(__file__).parent / "data" / "snli_triplets_512.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", default="bidirectional", choices=llm_embed.ATTENTION_MODES)
    parser.add_argument("--pooling", default="multi_layer", choices=sorted(llm_embed.POOLING_HEADS))
    parser.add_argument("--steps", type=int, default=16, help="fine-tuning steps of 16 triplets (0: no fine-tune)")
    parser.add_argument("--out", default=None,
                        help="keep the saved model (about 525 MiB) in this folder (default: a temporary folder, "
                             "deleted at the end)")
    args = parser.parse_args()
    if args.steps < 0:  # it would otherwise read as --steps 0 and skip the fine-tune without a word
        parser.error(f"--steps must be 0 (no fine-tune) or more, not {args.steps}")
    torch.manual_seed(0)

    start = time.perf_counter()
    backbone = smollm2_backbone_path()
    print(f"[1/6] bundled backbone SmolLM2-135M-Instruct at {backbone} ({time.perf_counter() - start:.1f}s)")

    model = LLMEmbeddingModel.from_backbone(backbone, attention=args.attention, pooling=args.pooling)
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    total = sum(p.numel() for p in model.parameters())
    print(
        f"[2/6] built LLMEmbeddingModel: attention={model.config.attention}, pooling={model.config.pooling}, "
        f"dim={model.config.embedding_dim}, head {head:,} params = {100 * head / total:.2f}% of {total:,}"
    )

    start = time.perf_counter()
    before = rank(model)
    print(f"[3/6] untrained: encoded {len(CORPUS)} documents and 1 query ({time.perf_counter() - start:.2f}s); "
          "the pooling head is random until trained")
    show(before)

    if args.steps > 0:
        with tempfile.TemporaryDirectory(prefix="llm_embed_quickstart_train_") as scratch:
            fine_tune(model, args.steps, scratch)
        after = rank(model)
        print("[5/6] fine-tuned:")
        show(after)
        print(f"      spread of the six scores {spread(before):.3f} -> {spread(after):.3f}; the card-PIN answer ranks "
              f"{place(before)} -> {place(after)}. What changed: the head and the backbone were trained to pull "
              "an SNLI sentence towards its entailment and away from its contradiction and the batch's other "
              f"sentences; training for {args.steps} step{'' if args.steps == 1 else 's'} on general-domain data "
              "moves the scores but teaches nothing about banking (see docs/results.md for what longer training "
              "does).")
    else:
        print("[4/6] --steps 0: no fine-tune\n[5/6] (skipped)")

    documents = model.encode(CORPUS, prompt_name="document", batch_size=4)
    if args.out:
        save_and_reload(model, documents, Path(args.out))
        print(f"      kept {args.out} ({folder_size(Path(args.out)) / 2**20:.0f} MiB); delete it when done")
    else:
        with tempfile.TemporaryDirectory(prefix="llm_embed_quickstart_") as out:
            save_and_reload(model, documents, Path(out))
        print(f"      deleted the temporary folder {out} (pass --out DIR to keep the model)")


def rank(model) -> np.ndarray:
    documents = model.encode(CORPUS, prompt_name="document", batch_size=6)
    return documents @ model.encode(QUERY, prompt_name="query")


def show(scores: np.ndarray) -> None:
    print(f"      query: {QUERY!r}")
    for position, index in enumerate(np.argsort(-scores), 1):
        print(f"      {position}. {scores[index]:.4f}  {CORPUS[index]}")


def spread(scores: np.ndarray) -> float:
    return float(scores.max() - scores.min())


def place(scores: np.ndarray) -> int:
    return int(np.argsort(-scores).tolist().index(0)) + 1


def fine_tune(model, steps: int, scratch: str) -> None:
    """Full fine-tuning with the transformers Trainer: a small rate for the pretrained backbone, a
    larger one for the pooling head (``head_learning_rate``), in-batch and one hard negative."""
    data = TripletDataset.from_jsonl(TRIPLETS)
    args = TrainingArguments(
        output_dir=scratch, max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-5,
        warmup_steps=2, lr_scheduler_type="linear", weight_decay=0.0, logging_steps=max(1, steps // 4),
        save_strategy="no", report_to=[], remove_unused_columns=False, use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = EmbeddingTrainer(model=model, args=args, train_dataset=data, head_learning_rate=1e-3,
                               data_collator=ContrastiveDataCollator(model.tokenizer, model.config))
    trainer.remove_callback(PrinterCallback)  # the losses are summarised below instead of printed per log
    start = time.perf_counter()
    trainer.train()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"[4/6] fine-tuned {steps} steps x 16 triplets of {TRIPLETS.name} ({len(data)} rows) in "
          f"{time.perf_counter() - start:.0f}s: loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save_and_reload(model, documents: np.ndarray, out: Path) -> None:
    model.save_pretrained(out)
    print(f"[6/6] saved to {out} ({folder_size(out) / 2**20:.0f} MiB): config.json (auto_map), model.safetensors, "
          "tokenizer, code files")

    reloaded = AutoModel.from_pretrained(out)
    again = reloaded.encode(CORPUS, prompt_name="document", batch_size=4)
    difference = float(np.abs(again - documents).max())
    print(f"      reloaded through AutoModel.from_pretrained: {type(reloaded).__name__}, "
          f"max |difference| = {difference}")
    if not np.array_equal(again, documents):
        raise SystemExit("reloaded embeddings differ from the original ones")
    print("      identical embeddings after reload: OK")


if __name__ == "__main__":
    main()
