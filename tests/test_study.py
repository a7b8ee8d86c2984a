"""The five-design study: paired significance tests by hand, and a CPU smoke run of the whole
command (tiny backbone, tiny budget) so the pipeline cannot rot."""

import json

import numpy as np
import pytest

from llm_embed.evaluation.significance import compare, holm
from llm_embed.evaluation.tasks import TaskResult

from .conftest import SHARED_DATA

pytest.importorskip("scipy")
pytest.importorskip("sklearn")


def sts_result(cosine, gold, name="STS-B"):
    from scipy.stats import spearmanr

    return TaskResult(name, "sts", "spearman", 100 * spearmanr(cosine, gold).statistic, {},
                      {"cosine": list(map(float, cosine)), "gold": list(map(float, gold))})


def test_sts_bootstrap_separates_a_good_from_a_noisy_model():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 400)
    good, noisy = gold + rng.normal(0, 0.5, 400), gold + rng.normal(0, 5, 400)
    result = compare(sts_result(good, gold), sts_result(noisy, gold))
    assert result.test == "paired bootstrap" and result.n_items == 400
    assert result.difference > 20 and result.ci_low > 0 and 0 < result.p_value < 0.01
    assert result.p_value == pytest.approx(2 / 1001)  # no resample crosses 0: the smallest p, never 0
    same = compare(sts_result(good, gold), sts_result(good, gold))
    assert same.difference == 0 and same.p_value == 1.0
    # two equally noisy models: no significant difference
    other = gold + rng.normal(0, 0.5, 400)
    assert compare(sts_result(good, gold), sts_result(other, gold)).p_value > 0.05


def test_mcnemar_and_wilcoxon_by_hand():
    from scipy.stats import binomtest, wilcoxon

    correct_a = [True] * 30 + [False] * 5 + [True] * 60
    correct_b = [False] * 30 + [True] * 5 + [True] * 60
    make = lambda correct: TaskResult("B77", "classification", "accuracy", 100 * np.mean(correct), {},
                                      {"correct": correct})
    result = compare(make(correct_a), make(correct_b))
    assert result.p_value == pytest.approx(binomtest(30, 35, 0.5).pvalue)
    assert result.difference == pytest.approx(100 * 25 / 95)

    ndcg_a = np.linspace(0.2, 0.9, 50)
    ndcg_b = ndcg_a - np.linspace(0.0, 0.1, 50)
    make = lambda ndcg: TaskResult("SciFact", "retrieval", "ndcg_at_10", 100 * ndcg.mean(), {},
                                   {"query_ids": [str(i) for i in range(50)], "ndcg_at_10": ndcg.tolist()})
    result = compare(make(ndcg_a), make(ndcg_b))
    assert result.p_value == pytest.approx(wilcoxon(100 * (ndcg_a - ndcg_b)).pvalue)
    assert result.difference == pytest.approx(100 * (ndcg_a - ndcg_b).mean()) and result.ci_low > 0


def test_clustering_bootstrap_and_unpaired_input_is_refused():
    gold = [str(i % 4) for i in range(200)]
    perfect = [i % 4 for i in range(200)]
    random = list(np.random.default_rng(0).integers(0, 4, 200))
    make = lambda cluster: TaskResult("SO", "clustering", "v_measure", 0.0, {}, {"cluster": cluster, "gold": gold})
    result = compare(make(perfect), make(random))
    assert result.ci_low > 50 and result.p_value < 0.01
    with pytest.raises(ValueError, match="same items"):
        compare(make(perfect), TaskResult("SO", "clustering", "v_measure", 0.0, {}, {"cluster": perfect[:10],
                                                                                     "gold": gold[:10]}))
    with pytest.raises(ValueError, match="different tasks"):
        compare(make(perfect), TaskResult("other", "clustering", "v_measure", 0.0, {}, {"cluster": perfect,
                                                                                        "gold": gold}))


def test_unpaired_results_and_undefined_resamples_are_refused():
    """Other gold labels, another category, or a bootstrap whose resamples are too often undefined
    (a few STS pairs: NaN resamples once counted on neither side of 0 and shrank the p-value) are
    refused by name; rare undefined resamples are left out of the p-value and the interval."""
    gold = [str(i % 4) for i in range(200)]
    cluster = [i % 4 for i in range(200)]
    make = lambda labels: TaskResult("SO", "clustering", "v_measure", 0.0, {}, {"cluster": cluster, "gold": labels})
    with pytest.raises(ValueError, match="different gold labels"):
        compare(make(gold), make([str(i % 5) for i in range(200)]))
    accuracy = TaskResult("SO", "classification", "accuracy", 50.0, {}, {"correct": [True] * 200})
    with pytest.raises(ValueError, match="cannot pair a classification result with a clustering result"):
        compare(accuracy, make(gold))
    with pytest.raises(ValueError, match="cannot pair a clustering result with a classification result"):
        compare(make(gold), accuracy)
    gold3 = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"of 1000 bootstrap resamples leave a correlation undefined"):
        compare(sts_result([0.1, 0.5, 0.9], gold3, "tiny"), sts_result([0.9, 0.1, 0.5], gold3, "tiny"))
    rng = np.random.default_rng(1)
    gold8 = rng.uniform(0, 5, 8)
    result = compare(sts_result(gold8 + rng.normal(0, 1, 8), gold8), sts_result(rng.normal(0, 1, 8), gold8))
    assert np.isfinite([result.ci_low, result.ci_high]).all() and 0 < result.p_value <= 1


def test_fast_v_measure_equals_sklearn():
    from sklearn.metrics import v_measure_score

    from llm_embed.evaluation.significance import v_measure_codes

    rng = np.random.default_rng(1)
    cases = [(rng.integers(0, 20, 2000), rng.integers(0, 20, 2000)),
             (rng.integers(0, 5, 300), rng.integers(0, 9, 300)),
             (np.arange(50) % 4, np.arange(50) % 4), (np.arange(50) % 4, np.zeros(50, dtype=int)),
             (np.zeros(50, dtype=int), np.arange(50) % 3)]
    for gold, cluster in cases:
        fast = v_measure_codes(gold, cluster, int(gold.max()) + 1, int(cluster.max()) + 1)
        assert fast == pytest.approx(v_measure_score(gold, cluster), abs=1e-12)


def test_clustering_bootstrap_can_survive_holm_over_ten_pairs():
    """Five designs are ten pairs: a clear clustering difference must stay significant after Holm
    (with 200 resamples the smallest p, 2/201, times 10 was 0.0995)."""
    gold = [str(i % 4) for i in range(400)]
    make = lambda cluster: TaskResult("SO", "clustering", "v_measure", 0.0, {}, {"cluster": cluster, "gold": gold})
    result = compare(make([i % 4 for i in range(400)]), make(list(np.random.default_rng(0).integers(0, 4, 400))))
    assert result.p_value == pytest.approx(2 / 1001) and holm([result.p_value] * 10)[0] < 0.05


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")
def test_study_smoke_run_on_cpu(tiny_backbone_dir, tmp_path, monkeypatch):
    """The whole command on a tiny random Llama: five designs trained, scored, tested, reported;
    a second invocation resumes (trains nothing) and --report-only rebuilds the reports."""
    from llm_embed import study

    out = tmp_path / "study"
    argv = ["--backbone", str(tiny_backbone_dir), "--data-dir", str(SHARED_DATA), "--output-dir", str(out),
            "--task-limit", "12", "stackoverflow=600", "--max-steps", "2", "--batch-size", "4",
            "--max-train-rows", "16",
            "--num-latents", "4", "--pooling-heads", "2", "--pooling-head-dim", "8", "--score-workers", "1",
            "--score-threads", "1", "--eval-batch-size", "16", "--max-seq-length", "64"]
    report = study.main(argv)
    assert sorted(run["design"] for run in report["runs"]) == [1, 2, 3, 4, 5]
    for run in report["runs"]:
        assert {r["task"] for r in run["results"]} == {"STS-B", "SICK-R", "SciFact", "Banking77", "StackOverflow"}
        assert len(run["losses"]) == 2 and all(np.isfinite(run["losses"]))
        by_task = {r["task"]: r for r in run["results"]}
        assert len(by_task["STS-B"]["per_item"]["cosine"]) == 12
        assert len(by_task["SciFact"]["per_item"]["ndcg_at_10"]) == 12
    # designs really differ: the same seed gives different STS cosines per design
    cosines = {run["design"]: next(r for r in run["results"] if r["task"] == "STS-B")["per_item"]["cosine"]
               for run in report["runs"]}
    assert len({tuple(np.round(c, 6)) for c in cosines.values()}) == 5
    assert len(report["tests"]) == 10 * 5 and all(0 <= t["p_holm"] <= 1 for t in report["tests"])
    assert [c["verdict"] for c in report["claims"]] and all(c["outcomes"] for c in report["claims"])
    assert (out / "designs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "bidirectional + multi_layer" in markdown and "Wilcoxon" in markdown and "McNemar" in markdown
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"].keys() == {"1", "2", "3", "4", "5"}

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("design*.json")}
    monkeypatch.setattr(study, "train_design", lambda *a, **k: pytest.fail("a finished run was trained again"))
    study.main(argv)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("design*.json")} == stamps
    (out / "results.md").unlink()
    study.main([*argv, "--report-only"])
    assert (out / "results.md").read_text() == markdown
