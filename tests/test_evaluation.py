"""Evaluation tasks: metrics by hand, task wiring on small slices of the shared data, sanity anchors."""

import json

import numpy as np
import pytest

from llm_embed.evaluation import (
    RetrievalTask,
    STSTask,
    default_tasks,
    evaluate,
    ndcg_at_k,
    recall_at_k,
)
from llm_embed.evaluation.tasks import parse_task_limit, read_stsb

from .conftest import SHARED_DATA, tiny_model

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent", allow_module_level=True)


def test_ndcg_and_recall_by_hand():
    relevant = {"a": 1, "b": 2}
    # ranks: b at 1 (gain 2), x, a at 3 (gain 1); ideal: 2 then 1
    dcg = 2 / np.log2(2) + 1 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3)
    assert abs(ndcg_at_k(["b", "x", "a"], relevant) - dcg / idcg) < 1e-12
    assert ndcg_at_k(["a", "b"], {"a": 1}) == 1.0 and ndcg_at_k(["x"], {"a": 1}) == 0.0
    assert recall_at_k(["a", "x"], relevant, 100) == 0.5 and recall_at_k(["x"], relevant, 1) == 0.0


class CachedModel:
    """Encodes each list of texts once (the anchors below reuse the same embeddings)."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def encode(self, texts, **kwargs):
        key = (tuple(texts), kwargs.get("prompt_name"))
        if key not in self.cache:
            self.cache[key] = self.model.encode(texts, **kwargs)
        return self.cache[key]


class ShuffledModel:
    """A deliberately broken model: each text gets another text's embedding."""

    def __init__(self, model, seed=0):
        self.model, self.rng = model, np.random.default_rng(seed)

    def encode(self, texts, **kwargs):
        embeddings = self.model.encode(texts, **kwargs)
        return embeddings[self.rng.permutation(len(texts))]


@pytest.fixture(scope="module")
def smollm2_mean(smollm2_path):
    from llm_embed import LLMEmbeddingModel

    return LLMEmbeddingModel.from_backbone(smollm2_path, attention="causal", pooling="mean")


@pytest.mark.slow
def test_sanity_anchors_on_stsb(smollm2_mean):
    """Untrained SmolLM2 with mean pooling scores far above random on STS-B; shuffled embeddings
    score near zero (mean of 5 shuffles: under no correlation the sd of Spearman x100 over 400
    pairs is about 5, so about 2.2 for the mean)."""
    task = STSTask("STS-B", SHARED_DATA / "stsb" / "sts-test.csv", limit=400)
    cached = CachedModel(smollm2_mean)
    real = task.evaluate(cached).main_score
    broken = [task.evaluate(ShuffledModel(cached, seed)).main_score for seed in range(5)]
    print(f"STS-B test (400-pair seeded subset) Spearman x100: SmolLM2 mean {real:.1f}, shuffled {np.mean(broken):.1f} ({broken})")
    null_sd = 100 / np.sqrt(len(task.pairs) - 1)  # sd of Spearman x100 under no correlation: 5.0 for 400 pairs
    assert real > 4 * null_sd and abs(np.mean(broken)) < 8


def test_every_task_runs_and_writes_per_item_scores(tokenizer, tmp_path):
    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    results = evaluate(model, default_tasks(SHARED_DATA, limit=12), batch_size=16, show_progress_bar=False)
    by_name = {r.task: r for r in results}
    assert set(by_name) == {"STS-B", "SICK-R", "SciFact", "Banking77", "StackOverflow"}
    assert len(by_name["STS-B"].per_item["cosine"]) == 12 and -100 <= by_name["STS-B"].main_score <= 100
    assert len(by_name["SciFact"].per_item["ndcg_at_10"]) == 12
    assert 0 <= by_name["SciFact"].scores["recall_at_100"] <= 100
    assert len(by_name["Banking77"].per_item["correct"]) == 12
    assert len(by_name["StackOverflow"].per_item["cluster"]) == 12
    json.dumps([r.to_dict() for r in results])  # serialisable as the CLI writes it


def test_retrieval_finds_a_planted_document(tokenizer, tmp_path):
    """A query identical to one document must rank it first (cosine 1) -> nDCG@10 = 100."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in
                                enumerate(["the cat sat on the mat", "stock markets fell", "rain in spain"])) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "rain in spain"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq\td2\t1\n")
    model = tiny_model("llama", "causal", "mean", prompts={"query": "", "document": ""})
    model.tokenizer = tokenizer
    result = RetrievalTask("toy", corpus, tmp_path / "queries.jsonl", tmp_path / "qrels.tsv").evaluate(model)
    assert result.main_score == 100.0 and result.scores["recall_at_100"] == 100.0


def test_cli_prints_table_and_writes_json(tokenizer, tmp_path, capsys):
    from llm_embed.evaluation import main

    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    main([str(tmp_path / "model"), "--data-dir", str(SHARED_DATA), "--tasks", "stsb", "sick", "--limit", "10",
          "--output", str(tmp_path / "r.json"), "--no-progress"])
    assert "| STS-B | sts | spearman |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["task"] for r in saved["results"]] == ["STS-B", "SICK-R"]
    assert len(saved["results"][1]["per_item"]["gold"]) == 10


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tasks \\['msmarco'\\]"):
        default_tasks(SHARED_DATA, ["msmarco"])


def test_limits_take_seeded_random_subsets_in_file_order():
    """STS-B test is sorted by genre (rows 0-624 are captions): a capped run must sample the whole
    file, the same rows every time, in file order."""
    path = SHARED_DATA / "stsb" / "sts-test.csv"
    full, subset = read_stsb(path), read_stsb(path, 300)
    rows = [full.index(pair) for pair in subset]
    assert len(set(rows)) == 300 and rows == sorted(rows) and max(rows) > 1000 and min(rows) < 625
    assert read_stsb(path, 300) == subset and read_stsb(path, 5000) == full


def test_per_task_limits(tokenizer):
    tasks = default_tasks(SHARED_DATA, ["scifact", "banking77", "stackoverflow"],
                          {"scifact": 5, "scifact_corpus": 40, "banking77_train": 50, "stackoverflow": 200})
    scifact, banking77, stackoverflow = tasks
    relevant = {doc for query in scifact.query_ids for doc in scifact.qrels[query]}
    assert len(scifact.queries) == 5 and relevant <= set(scifact.corpus_ids)
    assert 40 <= len(scifact.documents) <= 40 + len(relevant)
    assert len(banking77.train_texts) == 50 and len(banking77.test_texts) == 3080  # not named: the whole test set
    assert len(stackoverflow.texts) == 200 and stackoverflow.n_clusters == 20  # sampled across the label-sorted file
    with pytest.raises(ValueError, match="unknown task limit keys \\['sts'\\]"):
        default_tasks(SHARED_DATA, ["stsb"], {"sts": 5})


def test_task_limit_command_line_form():
    assert parse_task_limit(None) is None and parse_task_limit(["500"]) == 500
    assert parse_task_limit(["stsb=5", "scifact_corpus=40"]) == {"stsb": 5, "scifact_corpus": 40}
    for bad in (["stsb=x"], ["stsb"], ["5", "6"], ["msmarco=5"]):
        with pytest.raises(ValueError, match="stsb|msmarco"):
            parse_task_limit(bad)
