"""Semantic search over SciFact with ``llm-embed-encode``'s shards: embed the corpus once, answer queries.

    .venv/bin/python examples/search_scifact.py --max-docs 300 --queries 20          # a quick look (CPU)
    .venv/bin/python examples/search_scifact.py --model out/smollm2 --faiss         # a trained model, FAISS

The corpus is embedded with :func:`llm_embed.corpus.encode_corpus` (what ``llm-embed-encode`` runs)
into safetensors shards under ``--output-dir``; run it again and the finished shards are reused.
The queries are embedded with ``encode_query`` and ranked by exact cosine similarity (the vectors are
L2-normalised, so a dot product), or by a FAISS ``IndexFlatIP`` with ``--faiss`` (the optional
``faiss-cpu`` package). It prints the top documents of the first query and the share of queries
whose top ``k`` holds a relevant document (SciFact's test qrels).

``--max-docs N`` keeps the first N documents plus every document relevant to the chosen queries,
written to a JSONL beside the shards, so that a quick run still has answers to find. Without a
``--model``, the bundled SmolLM2-135M is used untrained (causal attention, mean pooling: the best
untrained design on this backbone, docs/results.md), which finds little; fine-tune it first
(``examples/train.py`` or ``llm-embed-train``) for useful rankings.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

import llm_embed  # noqa: F401  (registers the Auto classes)
from llm_embed.corpus import encode_corpus, load_shards

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_model(path: str | None):
    from transformers import AutoModel

    if path is not None:
        return AutoModel.from_pretrained(path)
    from llm_embed import LLMEmbeddingModel
    from llm_embed.bundled import smollm2_backbone_path

    return LLMEmbeddingModel.from_backbone(smollm2_backbone_path(), attention="causal", pooling="mean")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def labelled_queries(scifact: Path, count: int) -> tuple[list[dict], dict[str, set[str]]]:
    relevant: dict[str, set[str]] = {}
    with open(scifact / "qrels" / "test.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = [q for q in read_jsonl(scifact / "queries.jsonl") if q["_id"] in relevant][:count]
    return queries, {q["_id"]: relevant[q["_id"]] for q in queries}


def corpus_file(scifact: Path, output_dir: Path, max_docs: int | None, needed: set[str]) -> Path:
    """The corpus to embed: the whole file, or its first ``max_docs`` rows plus the ``needed`` ones."""
    source = scifact / "corpus.jsonl"
    if max_docs is None:
        return source
    rows = read_jsonl(source)
    kept = [row for i, row in enumerate(rows) if i < max_docs or row["_id"] in needed]
    subset = output_dir.parent / f"{output_dir.name}-corpus-{max_docs}.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in kept)
    if not subset.exists() or subset.read_text(encoding="utf-8") != text:
        subset.write_text(text, encoding="utf-8")
    return subset


def require_faiss():
    """faiss, or the install command: checked before the corpus is embedded, not after."""
    try:
        import faiss
    except ImportError as error:
        raise SystemExit("--faiss needs the faiss-cpu package: pip install faiss-cpu (or drop --faiss for the "
                         f"exact numpy search) ({error})") from error
    return faiss


def top_k(queries: np.ndarray, documents: np.ndarray, k: int, use_faiss: bool) -> np.ndarray:
    """Indices of the ``k`` best documents per query, best first (exact inner product)."""
    k = min(k, len(documents))
    if use_faiss:
        faiss = require_faiss()
        index = faiss.IndexFlatIP(documents.shape[1])
        index.add(np.ascontiguousarray(documents, dtype=np.float32))
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    scores = queries @ documents.T
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(best, order, axis=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved LLMEmbeddingModel (default: SmolLM2, untrained)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output-dir", type=Path, default=Path("out/scifact_index"))
    parser.add_argument("--max-docs", type=int, default=None, help="first N documents (+ the relevant ones)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--faiss", action="store_true", help="rank with a FAISS IndexFlatIP (pip install faiss-cpu)")
    args = parser.parse_args(argv)
    if args.faiss:
        require_faiss()
    scifact = args.data_dir / "scifact"
    if not (scifact / "corpus.jsonl").is_file():
        raise SystemExit(f"no SciFact corpus under {scifact}; pass --data-dir (the folder holding scifact/)")
    queries, relevant = labelled_queries(scifact, args.queries)
    corpus = corpus_file(scifact, args.output_dir, args.max_docs, set().union(*relevant.values()))
    model = load_model(args.model)
    prompts = model.config.prompts
    summary = encode_corpus(model, [corpus], args.output_dir, text_field="text", title_field="title",
                            id_field="_id", prompt_name="document" if "document" in prompts else None,
                            batch_size=args.batch_size, shard_size=args.shard_size, model_path=args.model,
                            progress=True)
    ids, vectors = load_shards(args.output_dir)
    query_vectors = model.encode_query([q["text"] for q in queries], batch_size=args.batch_size, normalize=True)
    documents = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    best = top_k(query_vectors, documents, args.top_k, args.faiss)
    hits = [bool(relevant[q["_id"]] & {ids[i] for i in row}) for q, row in zip(queries, best)]
    titles = {row["_id"]: row.get("title", "") for row in read_jsonl(corpus)}
    print(f"query: {queries[0]['text']}")
    for rank, index in enumerate(best[0][:3], 1):
        mark = "  (relevant)" if ids[index] in relevant[queries[0]["_id"]] else ""
        print(f"  {rank}. {ids[index]}: {titles.get(ids[index], '')[:90]}{mark}")
    share = sum(hits) / len(hits)
    print(f"{sum(hits)} of {len(hits)} queries have a relevant document in their top {args.top_k} "
          f"({len(ids)} documents in {summary['shards']} shards under {args.output_dir})")
    return {"hits_at_k": share, "documents": len(ids), "queries": len(queries)}


if __name__ == "__main__":
    main()
