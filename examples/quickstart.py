"""The main job: a real embedding model from the bundled SmolLM2-135M backbone, end to end.

Bidirectional attention + multi-layers trainable pooling (the paper's model 5), encode a small
corpus, answer a query by cosine similarity, save, reload through ``AutoModel`` and check the
reloaded model gives identical embeddings. The pooling head is untrained here (fine-tune it with
the training tools); the point is the whole path working on real weights.

    .venv/bin/python examples/quickstart.py [--attention causal] [--pooling mean] [--out DIR]

The saved model is about 525 MiB (135M parameters in fp32). Without ``--out`` it goes to a temporary
folder that is deleted when the script ends; with ``--out DIR`` it is kept there (the script says
where and how big). The bundled backbone is converted once into ``~/.cache/llm_embed/`` (about
517 MiB, about 40 s the first time) and reused by later runs.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

import llm_embed  # noqa: F401  (registers the Auto classes)
from llm_embed import LLMEmbeddingModel
from llm_embed.bundled import smollm2_backbone_path

CORPUS = [
    "To reset your card PIN, open the app, choose Cards, then Security, then Change PIN.",
    "Our branches are open from 9am to 5pm on weekdays and until noon on Saturdays.",
    "If your card is lost or stolen, freeze it immediately in the app and order a replacement.",
    "International transfers usually arrive within two business days.",
    "The Eiffel Tower is 330 metres tall and stands in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]
QUERY = "how do I reset my card?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", default="bidirectional", choices=llm_embed.ATTENTION_MODES)
    parser.add_argument("--pooling", default="multi_layer", choices=sorted(llm_embed.POOLING_HEADS))
    parser.add_argument("--out", default=None,
                        help="keep the saved model (about 525 MiB) in this folder (default: a temporary folder, "
                             "deleted at the end)")
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    backbone = smollm2_backbone_path()
    print(f"[1/5] bundled backbone SmolLM2-135M-Instruct at {backbone} ({time.perf_counter() - start:.1f}s)")

    model = LLMEmbeddingModel.from_backbone(backbone, attention=args.attention, pooling=args.pooling)
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    total = sum(p.numel() for p in model.parameters())
    print(
        f"[2/5] built LLMEmbeddingModel: attention={model.config.attention}, pooling={model.config.pooling}, "
        f"dim={model.config.embedding_dim}, head {head:,} params = {100 * head / total:.2f}% of {total:,}"
    )

    start = time.perf_counter()
    documents = model.encode(CORPUS, prompt_name="document", batch_size=4)
    query = model.encode(QUERY, prompt_name="query")
    seconds = time.perf_counter() - start
    print(f"[3/5] encoded {len(CORPUS)} documents and 1 query -> {documents.shape} ({seconds:.2f}s)")
    scores = documents @ query
    print(f"      query: {QUERY!r}")
    for rank, index in enumerate(np.argsort(-scores)[:3], 1):
        print(f"      {rank}. {scores[index]:.4f}  {CORPUS[index]}")

    if args.out:
        save_and_reload(model, documents, Path(args.out))
        print(f"      kept {args.out} ({folder_size(Path(args.out)) / 2**20:.0f} MiB); delete it when done")
    else:
        with tempfile.TemporaryDirectory(prefix="llm_embed_quickstart_") as out:
            save_and_reload(model, documents, Path(out))
        print(f"      deleted the temporary folder {out} (pass --out DIR to keep the model)")


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save_and_reload(model, documents: np.ndarray, out: Path) -> None:
    model.save_pretrained(out)
    print(f"[4/5] saved to {out} ({folder_size(out) / 2**20:.0f} MiB): config.json (auto_map), model.safetensors, "
          "tokenizer, code files")

    reloaded = AutoModel.from_pretrained(out)
    again = reloaded.encode(CORPUS, prompt_name="document", batch_size=4)
    difference = float(np.abs(again - documents).max())
    print(f"[5/5] reloaded through AutoModel.from_pretrained: {type(reloaded).__name__}, "
          f"max |difference| = {difference}")
    if not np.array_equal(again, documents):
        raise SystemExit("reloaded embeddings differ from the original ones")
    print("      identical embeddings after reload: OK")


if __name__ == "__main__":
    main()
