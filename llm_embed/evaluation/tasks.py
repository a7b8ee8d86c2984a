"""Evaluation tasks over plain files (the formats of ../shared/data, see its README).

Each task takes file paths, embeds with ``model.encode`` and returns a :class:`TaskResult`: the
main score (x100, as MTEB reports), secondary scores, and per-item scores (what the study's
significance tests pair across designs). ``evaluate`` is ``score(embed(model))``: the two phases
are separate so that a caller can embed on the GPU and score (k-means, logistic regression) on
CPU workers while the GPU goes on with the next model; ``score`` takes only numpy arrays. Prompts follow the paper and its peers: retrieval
queries get the ``query`` instruction, documents the ``document`` prompt; symmetric tasks (STS,
classification, clustering) use ``prompt_name`` (default: none, i.e. the model's default).
scikit-learn and scipy are needed (``pip install llm-embed[evaluation]``).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


def require(module: str, extra: str = "evaluation"):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this task needs {module.split('.')[0]}: pip install 'llm-embed[{extra}]'") from err


@dataclass
class TaskResult:
    task: str
    category: str
    main_metric: str
    main_score: float
    scores: dict[str, float]
    per_item: dict[str, list] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class EvaluationTask:
    """What every task has: ``name``, ``category``, ``embed(model)`` and ``score(embeddings)``;
    ``evaluate`` runs both."""

    name: str
    category: str

    def evaluate(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> TaskResult:
        return self.score(self.embed(model, batch_size=batch_size, show_progress_bar=show_progress_bar))


def seeded_subset(rows: list, limit: int | None, seed: int = 0) -> list:
    """``limit`` rows drawn at random with a fixed seed, in file order. The shared files are sorted
    (STS-B by genre, Banking77 and StackOverflow by label), so their first rows are one genre or a
    few labels and would not be a fair sample of the task."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(np.random.default_rng(seed).permutation(len(rows))[:limit])
    return [rows[i] for i in keep]


def read_stsb(path, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """STS Benchmark TSV: genre, file, year, id, score, sentence1, sentence2 (extra columns ignored).
    ``limit`` keeps a seeded random subset (the file is sorted by genre)."""
    with open(path, encoding="utf-8") as handle:
        rows = [(row[5], row[6], float(row[4])) for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return seeded_subset(rows, limit, seed)


def read_sick(path, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """SICK TSV with sentence_A, sentence_B and relatedness_score; ``limit`` keeps a seeded random subset."""
    with open(path, encoding="utf-8") as handle:
        rows = [(row["sentence_A"], row["sentence_B"], float(row["relatedness_score"]))
                for row in csv.DictReader(handle, delimiter="\t")]
    return seeded_subset(rows, limit, seed)


class STSTask(EvaluationTask):
    """Spearman correlation (x100) of cosine similarity with the gold score."""

    category = "sts"

    def __init__(self, name: str, path, format: str = "stsb", limit: int | None = None, prompt_name: str | None = None):
        readers = {"stsb": read_stsb, "sick": read_sick}
        if format not in readers:
            raise ValueError(f"format must be one of {sorted(readers)}, got {format!r}")
        self.name, self.prompt_name = name, prompt_name
        self.pairs = readers[format](path, limit)
        if not self.pairs:
            raise ValueError(f"{path} holds no pairs")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        encode = lambda texts: model.encode(texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                            show_progress_bar=show_progress_bar)
        return {"first": encode([p[0] for p in self.pairs]), "second": encode([p[1] for p in self.pairs])}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        spearmanr = require("scipy.stats").spearmanr
        cosine = cosine_pairs(embeddings["first"], embeddings["second"])
        gold = [p[2] for p in self.pairs]
        spearman = 100 * float(spearmanr(cosine, gold).statistic)
        return TaskResult(self.name, self.category, "spearman", spearman, {"spearman": spearman},
                          {"cosine": cosine.tolist(), "gold": gold})


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded relevance (gain = relevance, log2 discount), as BEIR/pytrec_eval compute it."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int = 100) -> float:
    positives = {doc for doc, score in relevant.items() if score > 0}
    return len(positives & set(ranked[:k])) / len(positives) if positives else 0.0


class RetrievalTask(EvaluationTask):
    """BEIR layout: nDCG@10 (main, x100) and recall@100 over the queries in the qrels, exact cosine
    top-k over the whole corpus, computed in blocks of queries."""

    category = "retrieval"

    def __init__(self, name: str, corpus_path, queries_path, qrels_path, limit_queries: int | None = None,
                 corpus_limit: int | None = None, query_prompt_name: str | None = "query",
                 document_prompt_name: str | None = "document"):
        self.name = name
        self.query_prompt_name, self.document_prompt_name = query_prompt_name, document_prompt_name
        self.qrels: dict[str, dict[str, int]] = {}
        with open(qrels_path, encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                self.qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
        queries = {}
        with open(queries_path, encoding="utf-8") as handle:
            for line in handle:
                item = json.loads(line)
                if item["_id"] in self.qrels:
                    queries[item["_id"]] = item["text"]
        self.query_ids = seeded_subset(sorted(queries), limit_queries)
        self.queries = [queries[q] for q in self.query_ids]
        self.corpus_ids, self.documents = [], []
        needed = {doc for q in self.query_ids for doc in self.qrels[q]}
        with open(corpus_path, encoding="utf-8") as handle:
            for line in handle:
                item = json.loads(line)
                if corpus_limit is not None and len(self.corpus_ids) >= corpus_limit and item["_id"] not in needed:
                    continue
                self.corpus_ids.append(item["_id"])
                self.documents.append((item.get("title", "") + " " + item["text"]).strip())
        if not self.query_ids:
            raise ValueError(f"no query of {queries_path} appears in {qrels_path}")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        return {
            "corpus": model.encode(self.documents, prompt_name=self.document_prompt_name, batch_size=batch_size,
                                   show_progress_bar=show_progress_bar),
            "queries": model.encode(self.queries, prompt_name=self.query_prompt_name, batch_size=batch_size,
                                    show_progress_bar=show_progress_bar),
        }

    def score(self, embeddings: dict[str, np.ndarray], top_k: int = 100) -> TaskResult:
        corpus = torch.from_numpy(np.asarray(embeddings["corpus"], dtype=np.float32))
        queries = torch.from_numpy(np.asarray(embeddings["queries"], dtype=np.float32))
        corpus = torch.nn.functional.normalize(corpus, dim=-1)
        queries = torch.nn.functional.normalize(queries, dim=-1)
        ndcg, recall = [], []
        k = min(top_k, len(self.corpus_ids))
        for start in range(0, len(self.query_ids), 256):
            top = (queries[start:start + 256] @ corpus.T).topk(k, dim=1).indices
            for offset, row in enumerate(top.tolist()):
                ranked = [self.corpus_ids[i] for i in row]
                relevant = self.qrels[self.query_ids[start + offset]]
                ndcg.append(ndcg_at_k(ranked, relevant, 10))
                recall.append(recall_at_k(ranked, relevant, 100))
        scores = {"ndcg_at_10": 100 * float(np.mean(ndcg)), "recall_at_100": 100 * float(np.mean(recall))}
        return TaskResult(self.name, self.category, "ndcg_at_10", scores["ndcg_at_10"], scores,
                          {"query_ids": self.query_ids, "ndcg_at_10": ndcg, "recall_at_100": recall})


def read_labelled_csv(path, limit: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """CSV text,category. ``limit`` keeps a seeded random subset (the files are sorted by label)."""
    with open(path, encoding="utf-8") as handle:
        rows = [(row["text"], row["category"]) for row in csv.DictReader(handle)]
    rows = seeded_subset(rows, limit, seed)
    return [text for text, _ in rows], [label for _, label in rows]


class ClassificationTask(EvaluationTask):
    """Accuracy (x100) of a logistic-regression classifier trained on frozen train embeddings."""

    category = "classification"

    def __init__(self, name: str, train_path, test_path, limit_train: int | None = None, limit_test: int | None = None,
                 prompt_name: str | None = None, seed: int = 0):
        self.name, self.prompt_name, self.seed = name, prompt_name, seed
        self.train_texts, self.train_labels = read_labelled_csv(train_path, limit_train, seed)
        self.test_texts, self.test_labels = read_labelled_csv(test_path, limit_test, seed)

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        encode = lambda texts: model.encode(texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                            show_progress_bar=show_progress_bar)
        return {"train": encode(self.train_texts), "test": encode(self.test_texts)}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        linear_model = require("sklearn.linear_model")
        classifier = linear_model.LogisticRegression(max_iter=1000, random_state=self.seed)
        classifier.fit(embeddings["train"], self.train_labels)
        predicted = classifier.predict(embeddings["test"])
        correct = [bool(p == g) for p, g in zip(predicted, self.test_labels)]
        accuracy = 100 * float(np.mean(correct))
        return TaskResult(self.name, self.category, "accuracy", accuracy, {"accuracy": accuracy},
                          {"correct": correct, "predicted": [str(p) for p in predicted]})


class ClusteringTask(EvaluationTask):
    """V-measure (x100) of k-means on the embeddings against the gold labels; k defaults to the
    number of distinct gold labels (20 on the full StackOverflow set)."""

    category = "clustering"

    def __init__(self, name: str, texts_path, labels_path, n_clusters: int | None = None, limit: int | None = None,
                 prompt_name: str | None = None, seed: int = 0):
        self.name, self.prompt_name, self.seed = name, prompt_name, seed
        texts = Path(texts_path).read_text(encoding="utf-8").splitlines()
        labels = Path(labels_path).read_text(encoding="utf-8").splitlines()
        if len(texts) != len(labels):
            raise ValueError(f"{texts_path} and {labels_path} have {len(texts)} vs {len(labels)} lines")
        rows = seeded_subset(list(zip(texts, labels)), limit, seed)
        self.texts, self.labels = [t for t, _ in rows], [label for _, label in rows]
        self.n_clusters = n_clusters or len(set(self.labels))

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        return {"texts": model.encode(self.texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                      show_progress_bar=show_progress_bar)}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        cluster, metrics = require("sklearn.cluster"), require("sklearn.metrics")
        assigned = cluster.KMeans(n_clusters=self.n_clusters, n_init=10, random_state=self.seed).fit_predict(
            embeddings["texts"])
        v_measure = 100 * float(metrics.v_measure_score(self.labels, assigned))
        return TaskResult(self.name, self.category, "v_measure", v_measure, {"v_measure": v_measure},
                          {"cluster": assigned.tolist(), "gold": list(self.labels)})


#: keys of a per-task ``limit`` mapping: each task's items, plus the SciFact corpus (documents beyond
#: the relevant ones) and the Banking77 training set
LIMIT_KEYS = ("stsb", "sick", "scifact", "scifact_corpus", "banking77", "banking77_train", "stackoverflow")


def task_limits(limit: int | Mapping[str, int] | None) -> dict[str, int | None]:
    """One cap per :data:`LIMIT_KEYS` entry. An int caps every task's items (the SciFact corpus and
    the Banking77 training set at ten times it); a mapping caps only the keys it names."""
    if limit is None or isinstance(limit, int):
        scaled = None if limit is None else 10 * limit
        return {key: scaled if key in ("scifact_corpus", "banking77_train") else limit for key in LIMIT_KEYS}
    unknown = sorted(set(limit) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"unknown task limit keys {unknown}; choose from {list(LIMIT_KEYS)}")
    return {key: limit.get(key) for key in LIMIT_KEYS}


def parse_task_limit(values: list[str] | None) -> int | dict[str, int] | None:
    """Command-line form of a limit: ``500`` (every task) or ``stsb=500 scifact_corpus=1000 ...``."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    limits = {}
    for value in values:
        key, sep, number = value.partition("=")
        if not sep or not number.isdigit():
            raise ValueError(f"task limit {value!r}: write one number, or key=number with keys {list(LIMIT_KEYS)}")
        limits[key] = int(number)
    task_limits(limits)  # names unknown keys now rather than after a model is loaded
    return limits


def default_tasks(data_dir, names: list[str] | None = None, limit: int | Mapping[str, int] | None = None) -> list:
    """The shared data sets as tasks. ``limit`` (see :func:`task_limits`) keeps seeded random subsets
    for quick or CPU-sized runs."""
    data = Path(data_dir)
    caps = task_limits(limit)
    factories = {
        "stsb": lambda: STSTask("STS-B", data / "stsb" / "sts-test.csv", "stsb", caps["stsb"]),
        "sick": lambda: STSTask("SICK-R", data / "sick" / "SICK_test_annotated.txt", "sick", caps["sick"]),
        "scifact": lambda: RetrievalTask("SciFact", data / "scifact" / "corpus.jsonl", data / "scifact" / "queries.jsonl",
                                         data / "scifact" / "qrels" / "test.tsv", limit_queries=caps["scifact"],
                                         corpus_limit=caps["scifact_corpus"]),
        "banking77": lambda: ClassificationTask("Banking77", data / "banking77" / "train.csv",
                                                data / "banking77" / "test.csv", limit_train=caps["banking77_train"],
                                                limit_test=caps["banking77"]),
        "stackoverflow": lambda: ClusteringTask("StackOverflow", data / "clustering_stackoverflow" / "StackOverflow.txt",
                                                data / "clustering_stackoverflow" / "StackOverflow_gnd.txt", None,
                                                caps["stackoverflow"]),
    }
    names = names or list(factories)
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {sorted(factories)}")
    return [factories[n]() for n in names]
