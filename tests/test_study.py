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
    labelled = lambda labels: TaskResult("SO", "classification", "accuracy", 50.0, {},
                                         {"correct": [True] * 200, "gold": labels})
    with pytest.raises(ValueError, match="different gold labels"):  # other test files of the same length
        compare(labelled(gold), labelled([str(i % 5) for i in range(200)]))
    assert compare(labelled(gold), labelled(gold)).p_value == 1.0
    assert compare(accuracy, labelled(gold)).p_value == 1.0  # a result written before labels were recorded
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
    assert not (out / "checkpoints").exists()  # the Trainer's empty output folders are not left behind

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("design*.json")}
    monkeypatch.setattr(study, "train_design", lambda *a, **k: pytest.fail("a finished run was trained again"))
    study.main(argv)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("design*.json")} == stamps
    (out / "results.md").unlink()
    study.main([*argv, "--report-only"])
    assert (out / "results.md").read_text() == markdown


# ----------------------------------------------------------------------------- reruns into kept runs


def write_study_data(folder) -> None:
    """Training triplets and an STS file of one's own, for a study that needs no shared data."""
    from .conftest import triplet_rows

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tri.jsonl").write_text("".join(json.dumps(row) + "\n" for row in triplet_rows(8)))
    rows = [f"the cat {i} sleeps,a cat number {i} is asleep,{(i * 7) % 6}" for i in range(12)]
    (folder / "pairs.csv").write_text("sentence1,sentence2,score\n" + "\n".join(rows) + "\n")
    (folder / "pairs2.csv").write_text("sentence1,sentence2,score\n" + "\n".join(rows[:9]) + "\n")


def small_study_argv(backbone) -> list[str]:
    """Design 1, one seed, one step on a tiny backbone, scored on pairs.csv (paths relative to the
    working directory, so that a copied study folder is the same study)."""
    return ["--backbone", str(backbone), "--train-files", "tri.jsonl", "--task", "sts:pairs.csv", "--designs", "1",
            "--seeds", "0", "--max-steps", "1", "--batch-size", "2", "--max-seq-length", "32", "--score-workers", "1",
            "--score-threads", "1", "--eval-batch-size", "4", "--no-plot", "--output-dir", "out"]


@pytest.fixture(scope="module")
def kept_study(tiny_backbone_dir, tmp_path_factory):
    """A finished small study (data beside ``out/``), made once; tests work on copies of it."""
    import os

    from llm_embed import study

    folder = tmp_path_factory.mktemp("kept-study")
    write_study_data(folder)
    here = os.getcwd()
    os.chdir(folder)
    try:
        study.main(small_study_argv(tiny_backbone_dir))
    finally:
        os.chdir(here)
    return folder


@pytest.fixture
def study_copy(kept_study, tmp_path, monkeypatch):
    """A copy of the kept study as the working directory, with training forbidden (a rerun that would
    train fails the test) and the run files' stamps, to show they were not rewritten."""
    import shutil

    from llm_embed import study

    folder = tmp_path / "study"
    shutil.copytree(kept_study, folder)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(study, "train_design", lambda *a, **k: pytest.fail("a kept run was trained again"))
    return folder


def run_stamps(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "out").glob("*.json")} | {
        p.name: p.stat().st_mtime_ns for p in (folder / "out" / "runs").glob("design*.json")}


def replace_option(argv: list[str], option: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def test_study_rerun_with_other_arguments_is_refused_before_training(study_copy, tiny_backbone_dir):
    """A rerun into kept runs with other training, design or task arguments once skipped every run
    ("already done") and wrote reports labelled with the new arguments over the old scores; it is
    refused, naming each difference and the fix, and nothing is written."""
    from llm_embed import study

    stamps = run_stamps(study_copy)
    argv = small_study_argv(tiny_backbone_dir)
    argv = replace_option(replace_option(replace_option(argv, "--max-steps", "7"), "--max-seq-length", "24"),
                          "--task", "sts:pairs2.csv")
    with pytest.raises(ValueError) as refused:
        study.main(argv)
    message = str(refused.value)
    for difference in ("--max-steps 7 (kept runs: 1)", "--max-seq-length 24 (kept runs: 32)",
                       "--task sts:pairs2.csv (kept runs: sts:pairs.csv)", "another --output-dir"):
        assert difference in message
    assert "--eval-batch-size" not in message and "has changed" not in message  # pairs2.csv is another file
    assert run_stamps(study_copy) == stamps


def test_study_rerun_with_a_changed_data_file_is_refused(study_copy, tiny_backbone_dir):
    """The same arguments over other file contents (the task file and the training file edited in
    place) are other runs too."""
    from llm_embed import study

    argv = small_study_argv(tiny_backbone_dir)
    stamps = run_stamps(study_copy)
    for name, line in (("pairs.csv", "a dog barks,a dog is barking,5\n"),
                       ("tri.jsonl", json.dumps({"query": "q", "positive": "p", "negative": "n"}) + "\n")):
        kept = (study_copy / name).read_bytes()
        (study_copy / name).write_bytes(kept + line.encode())
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} has changed since the kept runs"):
            study.main(argv)
        (study_copy / name).write_bytes(kept)
    assert run_stamps(study_copy) == stamps


def test_study_rerun_with_other_non_result_arguments_resumes(study_copy, tiny_backbone_dir):
    """Arguments that change no run's model or scores (scoring processes and threads, the embedding
    batch size, the plot) do not block a rerun: it trains nothing and reports the kept runs."""
    from llm_embed import study

    stamps = {p.name: p.stat().st_mtime_ns for p in (study_copy / "out" / "runs").glob("design*.json")}
    argv = replace_option(replace_option(small_study_argv(tiny_backbone_dir), "--eval-batch-size", "3"),
                          "--score-threads", "2")
    report = study.main(argv)
    assert report["arguments"]["max_steps"] == 1 and report["arguments"]["eval_batch_size"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (study_copy / "out" / "runs").glob("design*.json")} == stamps


def test_study_report_only_reports_the_runs_own_arguments(study_copy):
    """--report-only once labelled the kept runs with this command's arguments (its defaults: 50
    steps, the five built-in tasks); the report now takes the runs' own, and refuses a given argument
    that differs from theirs."""
    from llm_embed import study

    report = study.main(["--report-only", "--no-plot", "--output-dir", "out"])
    arguments = json.loads((study_copy / "out" / "results.json").read_text())["arguments"]
    assert report["arguments"] == arguments
    assert arguments["max_steps"] == 1 and arguments["max_seq_length"] == 32
    assert arguments["task"] == [["sts:pairs.csv"]] and arguments["tasks"] == []
    stamps = run_stamps(study_copy)
    with pytest.raises(ValueError) as refused:
        study.main(["--report-only", "--no-plot", "--output-dir", "out", "--max-steps", "7", "--task",
                    "sts:pairs2.csv"])
    message = str(refused.value)
    assert "--max-steps 7 (kept runs: 1)" in message and "--task sts:pairs2.csv (kept runs: sts:pairs.csv)" in message
    assert run_stamps(study_copy) == stamps
    # the runs' own values, given again, are no difference
    study.main(["--report-only", "--no-plot", "--output-dir", "out", "--max-steps", "1", "--task", "sts:pairs.csv"])


def test_study_rerun_into_runs_without_a_record_is_refused(study_copy, tiny_backbone_dir):
    """Runs written before the study recorded its arguments cannot be checked: a training rerun into
    them is refused (it would report them as made with whatever it was given)."""
    from llm_embed import study

    path = study_copy / "out" / "runs" / "design1_seed0.json"
    run = json.loads(path.read_text())
    for key in ("arguments", "data_files"):
        run.pop(key, None)
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="no record of the arguments"):
        study.main(small_study_argv(tiny_backbone_dir))


def test_every_study_argument_is_decided_for_reruns():
    """Each option either decides a run (recorded and compared on a rerun) or not (a rerun may change
    it, with the reason): a new option must be put on one side."""
    from llm_embed import study
    from llm_embed.configuration_llm_embed import OPTIONS

    destinations = {action.dest for action in study.build_parser()._actions if action.dest != "help"}
    config = {option.name for option in OPTIONS} - set(study.DESIGN_OPTIONS)
    decided = [*study.RUN_ARGUMENTS, *study.OTHER_ARGUMENTS, *config]
    assert sorted(decided) == sorted(destinations)


def test_study_report_over_runs_made_with_different_arguments_is_refused(study_copy):
    """Runs of two studies in one runs/ folder (copied there by hand) would be compared in one report
    as if trained alike."""
    from llm_embed import study

    runs = study_copy / "out" / "runs"
    run = json.loads((runs / "design1_seed0.json").read_text())
    run.update(design=2, attention="causal", pooling="latent_attention")
    run["arguments"]["max_steps"] = 3
    (runs / "design2_seed0.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match=r"different arguments \(design2_seed0.json: --max-steps 3 "
                                         r"\(design1_seed0.json: 1\)\)"):
        study.main(["--report-only", "--no-plot", "--output-dir", "out"])


# ----------------------------------------------------------------------------- the output folder


def test_study_leaves_no_empty_checkpoint_folders(kept_study):
    """Each run's Trainer creates checkpoints/design{N}_seed{S} in --output-dir and the study saves
    nothing there (save_strategy="no"): the empty folders were left behind, and are now removed."""
    assert sorted(p.name for p in (kept_study / "out").iterdir()) == ["results.json", "results.md", "runs"]


def test_removing_a_run_folder_keeps_anything_that_holds_files(tmp_path):
    from llm_embed.study import remove_empty_run_folder

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "design1_seed0").mkdir(parents=True)
    (checkpoints / "design1_seed0" / "adapter_config.json").write_text("{}")
    (checkpoints / "design2_seed0").mkdir()
    remove_empty_run_folder(checkpoints / "design1_seed0")  # not empty: kept, and checkpoints/ with it
    remove_empty_run_folder(checkpoints / "design2_seed0")  # empty: removed; checkpoints/ still holds design1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["design1_seed0"]
    (checkpoints / "design1_seed0" / "adapter_config.json").unlink()
    remove_empty_run_folder(checkpoints / "design1_seed0")
    assert list(tmp_path.iterdir()) == []
    remove_empty_run_folder(checkpoints / "design1_seed0")  # already gone: nothing to do


def test_save_models_into_the_checkpoints_folder_is_kept(tiny_backbone_dir, tmp_path, monkeypatch):
    """--save-models may name the folder the Trainer writes to (output-dir/checkpoints): the saved
    design is never removed with the empty run folders."""
    from llm_embed import study
    from llm_embed.lora import LORA_BASE_FILE

    write_study_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    study.main([*small_study_argv(tiny_backbone_dir), "--save-models", "out/checkpoints"])
    saved = tmp_path / "out" / "checkpoints" / "design1_seed0"
    assert (saved / "adapter_config.json").is_file() and (saved / LORA_BASE_FILE).is_file()
