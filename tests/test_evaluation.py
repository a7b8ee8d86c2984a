"""Evaluation tasks: metrics by hand, task wiring on small slices of the shared data, sanity anchors;
small-subset refusals and warnings on synthetic files; the command's help, data folder and warnings."""

import contextlib
import json
import warnings

import numpy as np
import pytest

from llm_embed.evaluation import (
    ClassificationTask,
    ClusteringTask,
    RetrievalTask,
    SampleTooSmallError,
    SmallSampleWarning,
    STSTask,
    default_tasks,
    evaluate,
    format_table,
    ndcg_at_k,
    recall_at_k,
)
from llm_embed.evaluation.tasks import chance_v_measure, parse_task_limit, read_stsb, task_limits

from .conftest import SHARED_DATA, tiny_model

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
# the synthetic-file tests below run without it
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


def test_ndcg_and_recall_by_hand():
    relevant = {"a": 1, "b": 2}
    # ranks: b at 1 (gain 2), x, a at 3 (gain 1); ideal: 2 then 1
    dcg = 2 / np.log2(2) + 1 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3)
    assert abs(ndcg_at_k(["b", "x", "a"], relevant) - dcg / idcg) < 1e-12
    assert ndcg_at_k(["a", "b"], {"a": 1}) == 1.0 and ndcg_at_k(["x"], {"a": 1}) == 0.0
    assert recall_at_k(["a", "x"], relevant, 100) == 0.5 and recall_at_k(["x"], relevant, 1) == 0.0


def test_ndcg_gives_no_gain_to_grades_of_zero_or_below():
    """As pytrec_eval (BEIR, MTEB) counts them: Touché-2020 grades some documents -2. As negative gains
    they made the ideal DCG negative (nDCG 0 for a ranking pytrec_eval scores 63.09) or lowered nDCG."""
    assert ndcg_at_k(["d0", "d1"], {"d0": -2, "d1": 1}) == pytest.approx(1 / np.log2(3))  # 0.6309
    assert ndcg_at_k(["d1", "d0"], {"d0": -2, "d1": 1}) == 1.0
    assert ndcg_at_k(["x", "d0"], {"d0": -1, "d2": 0}) == 0.0  # nothing relevant: 0, as before
    relevant = {"a": 2, "b": -1, "c": 1}
    expected = (0 + 1 / np.log2(3) + 2 / np.log2(4)) / (2 + 1 / np.log2(3))
    assert ndcg_at_k(["b", "c", "a"], relevant) == pytest.approx(expected)


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


@needs_shared_data
@pytest.mark.slow
def test_sanity_anchors_on_stsb(smollm2_mean):
    """Untrained SmolLM2 with mean pooling scores far above random on STS-B; shuffled embeddings
    score near zero (mean of 5 shuffles: under no correlation the sd of Spearman x100 over 400
    pairs is about 5, so about 2.2 for the mean)."""
    task = STSTask("STS-B", SHARED_DATA / "stsb" / "sts-test.csv", limit=400)
    cached = CachedModel(smollm2_mean)
    real = task.evaluate(cached).main_score
    broken = [task.evaluate(ShuffledModel(cached, seed)).main_score for seed in range(5)]
    print(f"STS-B test (400-pair seeded subset) Spearman x100: SmolLM2 mean {real:.1f}, "
          f"shuffled {np.mean(broken):.1f} ({broken})")
    null_sd = 100 / np.sqrt(len(task.pairs) - 1)  # sd of Spearman x100 under no correlation: 5.0 for 400 pairs
    assert real > 4 * null_sd and abs(np.mean(broken)) < 8


@needs_shared_data
def test_every_task_runs_and_writes_per_item_scores(tokenizer, tmp_path):
    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    # 12 items per task; StackOverflow needs more (12 texts in 10 clusters score 89 at random: refused, see below)
    limit = {**task_limits(12), "stackoverflow": 600}
    with pytest.warns(SmallSampleWarning):
        results = evaluate(model, default_tasks(SHARED_DATA, limit=limit), batch_size=16, show_progress_bar=False)
    by_name = {r.task: r for r in results}
    assert set(by_name) == {"STS-B", "SICK-R", "SciFact", "Banking77", "StackOverflow"}
    assert len(by_name["STS-B"].per_item["cosine"]) == 12 and -100 <= by_name["STS-B"].main_score <= 100
    assert len(by_name["SciFact"].per_item["ndcg_at_10"]) == 12
    assert 0 <= by_name["SciFact"].scores["recall_at_100"] <= 100
    assert len(by_name["Banking77"].per_item["correct"]) == 12
    assert len(by_name["StackOverflow"].per_item["cluster"]) == 600
    assert by_name["STS-B"].warnings and by_name["Banking77"].warnings  # 12 items: noisy, said so
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


@needs_shared_data
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


@needs_shared_data
def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tasks \\['msmarco'\\]"):
        default_tasks(SHARED_DATA, ["msmarco"])


@needs_shared_data
def test_limits_take_seeded_random_subsets_in_file_order():
    """STS-B test is sorted by genre (rows 0-624 are captions): a capped run must sample the whole
    file, the same rows every time, in file order."""
    path = SHARED_DATA / "stsb" / "sts-test.csv"
    full, subset = read_stsb(path), read_stsb(path, 300)
    rows = [full.index(pair) for pair in subset]
    assert len(set(rows)) == 300 and rows == sorted(rows) and max(rows) > 1000 and min(rows) < 625
    assert read_stsb(path, 300) == subset and read_stsb(path, 5000) == full


@needs_shared_data
def test_per_task_limits(tokenizer):
    tasks = default_tasks(SHARED_DATA, ["scifact", "banking77", "stackoverflow"],
                          {"scifact": 5, "scifact_corpus": 40, "banking77_train": 100, "stackoverflow": 200})
    scifact, banking77, stackoverflow = tasks
    relevant = {doc for query in scifact.query_ids for doc in scifact.qrels[query]}
    assert len(scifact.queries) == 5 and relevant <= set(scifact.corpus_ids)
    assert 40 <= len(scifact.documents) <= 40 + len(relevant)
    assert len(banking77.train_texts) == 100 and len(banking77.test_texts) == 3080  # not named: the whole test set
    assert len(stackoverflow.texts) == 200 and stackoverflow.n_clusters == 20  # sampled across the label-sorted file
    with pytest.raises(ValueError, match="unknown task limit keys \\['sts'\\]"):
        default_tasks(SHARED_DATA, ["stsb"], {"sts": 5})


def test_task_limit_command_line_form():
    assert parse_task_limit(None) is None and parse_task_limit(["500"]) == 500
    assert parse_task_limit(["stsb=5", "scifact_corpus=40"]) == {"stsb": 5, "scifact_corpus": 40}
    for bad in (["stsb=x"], ["stsb"], ["5", "6"], ["msmarco=5"]):
        with pytest.raises(ValueError, match="stsb|msmarco"):
            parse_task_limit(bad)


# ----------------------------------------------------------------------------- small subsets
# Each task checks its items when built (before a model runs): too few for the metric to mean
# anything -> SampleTooSmallError (a ValueError); merely noisy -> SmallSampleWarning, kept in
# task.warnings and in the result. Synthetic files in the shared data's formats.


class RandomModel:
    """Random 8-dimensional embeddings: enough to run ``score``."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def encode(self, texts, **kwargs):
        return self.rng.normal(size=(len(texts), 8)).astype(np.float32)


def write_stsb(path, scores):
    path.write_text("".join(f"main\tfile\t2012\t{i}\t{score}\tsentence {i} a\tsentence {i} b\n"
                            for i, score in enumerate(scores)))
    return path


def write_labelled_csv(path, labels):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows([f"text {i} about {label}", label] for i, label in enumerate(labels))
    return path


def write_beir(folder, n_docs, qrels):
    """``qrels``: (query-id, corpus-id, score) rows; documents d0..d{n_docs-1}; one query per query-id."""
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i}"})
                                                 + "\n" for i in range(n_docs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n"
                                                  for q in sorted({q for q, _, _ in qrels})))
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels.tsv"


def write_clustering(folder, labels):
    (folder / "texts.txt").write_text("".join(f"title {i}\n" for i in range(len(labels))))
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return folder / "texts.txt", folder / "labels.txt"


@contextlib.contextmanager
def no_small_sample_warning():
    """Fail on any SmallSampleWarning inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSampleWarning)
        yield


def test_sts_refuses_fewer_than_three_pairs_or_constant_gold(tmp_path):
    with pytest.raises(SampleTooSmallError, match="STS: 2 pair\\(s\\): a Spearman correlation needs at least 3"):
        STSTask("STS", write_stsb(tmp_path / "two.csv", [1.0, 4.0]))
    with pytest.raises(SampleTooSmallError, match="all 5 gold scores are equal"):
        STSTask("STS", write_stsb(tmp_path / "flat.csv", [3.0] * 5))
    assert isinstance(SampleTooSmallError("x"), ValueError)  # the console commands print it as one line


def test_sts_warns_under_100_pairs_and_the_result_keeps_the_warning(tmp_path):
    with pytest.warns(SmallSampleWarning, match="STS: only 10 pairs: .* scatters by \\+-33"):
        task = STSTask("STS", write_stsb(tmp_path / "ten.csv", np.linspace(0, 5, 10)))
    result = task.evaluate(RandomModel())
    assert result.warnings == task.warnings and "only 10 pairs" in result.warnings[0]
    table = format_table([result])
    assert "| STS | sts | spearman |" in table and " * |" in table and "* STS: only 10 pairs" in table
    with no_small_sample_warning():
        quiet = STSTask("STS", write_stsb(tmp_path / "many.csv", np.linspace(0, 5, 100)))
    assert quiet.evaluate(RandomModel()).warnings == [] and "*" not in format_table([quiet.evaluate(RandomModel())])


def test_retrieval_refuses_when_no_query_has_a_relevant_document_in_the_corpus(tmp_path):
    files = write_beir(tmp_path, 200, [("q1", "missing-1", 1), ("q2", "d3", 0)])  # absent; score 0 is not relevant
    with pytest.raises(SampleTooSmallError,
                       match="none of the 2 queries has a relevant document .* in the corpus of 200"):
        RetrievalTask("R", *files)


def test_retrieval_warns_on_queries_without_relevant_documents_few_queries_and_small_corpus(tmp_path):
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(60)] + [("lost", "missing", 1)]
    with pytest.warns(SmallSampleWarning, match="1 of 61 queries have no relevant document in the corpus"):
        task = RetrievalTask("R", *write_beir(tmp_path, 200, qrels))
    assert len(task.warnings) == 1  # 61 queries and 200 documents: nothing else to say
    result = task.evaluate(RandomModel())
    assert result.per_item["ndcg_at_10"][task.query_ids.index("lost")] == 0.0 and result.warnings == task.warnings

    small = tmp_path / "small"
    small.mkdir()
    with pytest.warns(SmallSampleWarning) as caught:
        task = RetrievalTask("R", *write_beir(small, 30, [(f"q{i}", f"d{i}", 1) for i in range(5)]))
    messages = [str(w.message) for w in caught]
    assert any("only 5 queries" in m and "standard error of up to 22 points" in m for m in messages)
    assert any("only 30 documents: recall@100 is 100 for any model" in m for m in messages)
    assert task.evaluate(RandomModel()).scores["recall_at_100"] == 100.0  # what the warning says


def test_classification_refuses_fewer_training_rows_than_classes(tmp_path):
    train = write_labelled_csv(tmp_path / "train.csv", [f"c{i}" for i in range(10)] * 30)
    test = write_labelled_csv(tmp_path / "test.csv", [f"c{i}" for i in range(10)] * 20)
    with pytest.raises(SampleTooSmallError, match="C: 8 training rows for 10 classes: at least 2 classes cannot"):
        ClassificationTask("C", train, test, limit_train=8)
    with no_small_sample_warning():  # 300 rows (30 a class) and 200 test items: fine
        ClassificationTask("C", train, test)


def test_classification_refuses_one_training_class_or_no_test_class_seen_in_training(tmp_path):
    one = write_labelled_csv(tmp_path / "one.csv", ["a"] * 20)
    with pytest.raises(SampleTooSmallError, match="of 1 class: a classifier needs at least 2 classes"):
        ClassificationTask("C", one, write_labelled_csv(tmp_path / "test_a.csv", ["a"] * 5))
    train = write_labelled_csv(tmp_path / "train.csv", ["a", "b"] * 10)
    unseen = write_labelled_csv(tmp_path / "test_c.csv", ["c"] * 5)
    with pytest.raises(SampleTooSmallError, match="none of the 5 test items has a class seen in the 20 training rows"):
        ClassificationTask("C", train, unseen)


def test_classification_warns_on_unseen_test_classes_few_rows_per_class_and_few_test_items(tmp_path):
    train = write_labelled_csv(tmp_path / "train.csv", ["a", "b", "c", "d"] * 3)      # 3 rows per class
    test = write_labelled_csv(tmp_path / "test.csv", ["a", "b", "c", "e"] * 5)        # class e never trained
    with pytest.warns(SmallSampleWarning) as caught:
        task = ClassificationTask("C", train, test)
    messages = [str(w.message) for w in caught]
    assert any("5 of 20 test items (1 class) have no training example" in m and "cannot exceed 75.0" in m
               for m in messages)
    assert any("only 2.4 training rows per class (12 rows, 5 classes)" in m for m in messages)
    assert any("only 20 test items: accuracy has a standard error of up to 11 points" in m for m in messages)
    result = task.evaluate(RandomModel())
    assert result.main_score <= 75.0 and len(result.warnings) == 3


def test_clustering_two_files_are_read_line_for_line(tmp_path):
    """The two-file form read with ``str.splitlines`` and plain UTF-8: a byte-order mark made the first
    label another class, a title holding U+2028 took two lines, and with one more (blank) line in the
    labels file the counts agreed and 292 of 300 titles carried another title's label."""
    labels = [str(i % 3) for i in range(30)]
    texts = [f"title {i}" + (" a\u2028b\x0cc\x85d" if i == 4 else "") for i in range(30)]
    (tmp_path / "texts.txt").write_text("\ufeff" + "".join(f"{t}\n" for t in texts), encoding="utf-8")
    (tmp_path / "labels.txt").write_text("\ufeff" + "\r\n".join(labels) + "\r\n", encoding="utf-8")
    task = ClusteringTask("K", tmp_path / "texts.txt", tmp_path / "labels.txt")
    assert task.texts == texts and task.labels == labels and task.n_clusters == 3

    (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in labels[:4]) + "\n"
                                         + "".join(f"{label}\n" for label in labels[5:]))
    with pytest.raises(ValueError, match=r"labels.txt:5: an empty label \(for .*texts.txt line 5\)"):
        ClusteringTask("K", tmp_path / "texts.txt", tmp_path / "labels.txt")
    (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in labels) + "\n")
    with pytest.raises(ValueError, match="have 30 vs 31 lines"):
        ClusteringTask("K", tmp_path / "texts.txt", tmp_path / "labels.txt")
    (tmp_path / "texts.txt").write_bytes("caf\u00e9\n".encode("latin-1") * 30)
    with pytest.raises(ValueError, match=r"texts.txt is not UTF-8 text .*iconv -f latin1 -t utf-8"):
        ClusteringTask("K", tmp_path / "texts.txt", tmp_path / "labels.txt")


def test_json_labels_one_and_one_point_zero_are_one_class(tmp_path):
    """JSON has one kind of number: a training file writing labels 1 and a test file writing 1.0 shared no
    class (refused as 'no test item has a class seen in training', with advice to add rows)."""
    from llm_embed.evaluation.tasks import read_labelled_csv

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": float(i % 2)}) + "\n"
                                              for i in range(4)))
    columns = {"text": "text", "label": "label"}
    assert read_labelled_csv(tmp_path / "a.jsonl", columns=columns)[1] == ["0", "1", "0", "1"]
    assert read_labelled_csv(tmp_path / "b.jsonl", columns=columns)[1] == ["0", "1", "0", "1"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "t", "label": 1.5}) + "\n")
    assert read_labelled_csv(tmp_path / "c.jsonl", columns=columns)[1] == ["1.5"]


def test_clustering_refuses_as_many_clusters_as_texts(tmp_path):
    texts, labels = write_clustering(tmp_path, [str(i % 5) for i in range(5)])
    with pytest.raises(SampleTooSmallError, match="K: 5 clusters for 5 texts: k-means cannot"):
        ClusteringTask("K", texts, labels)
    with pytest.raises(SampleTooSmallError, match="8 clusters for 5 texts"):
        ClusteringTask("K", texts, labels, n_clusters=8)
    texts, labels = write_clustering(tmp_path, ["same"] * 30)
    with pytest.raises(SampleTooSmallError, match="1 gold label\\(s\\)"):
        ClusteringTask("K", texts, labels, n_clusters=3)


def test_clustering_refuses_when_chance_scores_half_the_scale_and_warns_above_ten(tmp_path):
    """The issue's case: 20 StackOverflow titles fell into 13 labels, and a random clustering of
    them scores about 79, so the reported 79.16 said nothing about the embeddings."""
    labels = [str(i % 13) for i in range(20)]
    assert chance_v_measure(labels, 13) > 70
    with pytest.raises(SampleTooSmallError,
                       match="20 texts to 13 clusters already scores a V-measure of [7-9]\\d\\.\\d"):
        ClusteringTask("K", *write_clustering(tmp_path, labels))

    noisy = tmp_path / "noisy"
    noisy.mkdir()
    labels = [str(i % 10) for i in range(100)]  # 10 texts per cluster: chance about 22
    with pytest.warns(SmallSampleWarning, match="100 texts to 10 clusters already scores a V-measure of 2\\d\\.\\d"):
        task = ClusteringTask("K", *write_clustering(noisy, labels))
    assert 10 <= task.chance_v_measure < 50
    result = task.evaluate(RandomModel())
    assert result.scores["v_measure_chance"] == task.chance_v_measure and result.warnings == task.warnings
    assert abs(result.main_score - task.chance_v_measure) < 10  # random embeddings score about chance

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    with no_small_sample_warning():
        task = ClusteringTask("K", *write_clustering(quiet, [str(i % 4) for i in range(400)]))
    assert task.chance_v_measure < 2


@needs_shared_data
def test_default_tasks_name_the_limit_key_to_raise():
    with pytest.raises(SampleTooSmallError, match="StackOverflow: a random assignment of these 20 texts .* limit "
                                                  "key 'stackoverflow', e.g. on the command line --limit 20 "
                                                  "stackoverflow=1000"):
        default_tasks(SHARED_DATA, ["stackoverflow"], 20)
    with pytest.raises(SampleTooSmallError, match="Banking77: 50 training rows for 77 classes.*'banking77_train'"):
        default_tasks(SHARED_DATA, ["banking77"], 5)
    with no_small_sample_warning():  # what the refusal advises: 1,000 titles, chance about 7
        [task] = default_tasks(SHARED_DATA, ["stackoverflow"], parse_task_limit(["20", "stackoverflow=1000"]))
    assert len(task.texts) == 1000 and task.n_clusters == 20 and task.chance_v_measure < 10


def test_task_limit_mixes_one_number_and_named_keys():
    assert parse_task_limit(["20", "stackoverflow=1000"]) == {**task_limits(20), "stackoverflow": 1000}
    assert parse_task_limit(["stackoverflow=1000", "20"])["scifact_corpus"] == 200
    with pytest.raises(ValueError, match="one number followed by key=number pairs"):
        parse_task_limit(["20", "30", "stsb=5"])


# ----------------------------------------------------------------------------- the data folder and the command


def test_missing_data_folder_or_files_name_the_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"data folder nowhere not found \\(looked at {tmp_path}/nowhere\\)"):
        default_tasks("nowhere", ["stsb"])
    (tmp_path / "data" / "stsb").mkdir(parents=True)
    write_stsb(tmp_path / "data" / "stsb" / "sts-test.csv", np.linspace(0, 5, 100))
    with pytest.raises(FileNotFoundError) as error:
        default_tasks("data", ["stsb", "sick", "banking77"])
    message = str(error.value)
    assert f"sick: {tmp_path}/data/sick/SICK_test_annotated.txt" in message
    assert f"banking77: {tmp_path}/data/banking77/train.csv" in message and "sts-test.csv" not in message
    assert "nothing is downloaded" in message
    [task] = default_tasks("data", ["stsb"])
    assert len(task.pairs) == 100


def test_command_help_shows_defaults_and_the_data_layout(capsys):
    from llm_embed.evaluation import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for expected in ("(default: ../shared/data", "(default: 32)", "(default: all five)", "(default: whole test sets)",
                     "stsb/sts-test.csv", "sick/SICK_test_annotated.txt", "scifact/qrels/test.tsv",
                     "banking77/train.csv", "clustering_stackoverflow/StackOverflow_gnd.txt", "Nothing is downloaded"):
        assert expected in help_text, expected


def test_command_missing_data_dir_names_the_absolute_path(tmp_path, monkeypatch, capsys):
    from llm_embed.evaluation import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["some-model", "--data-dir", "../no-data-here"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"looked at {tmp_path.parent}/no-data-here, relative to the current folder {tmp_path}" in error


def test_command_refuses_a_batch_size_below_one_before_loading_the_model(tmp_path, capsys):
    """``--batch-size 0`` was refused by encode, after the model had loaded."""
    from llm_embed.evaluation import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "no-model"), "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "--batch-size must be a positive number of texts, got 0" in capsys.readouterr().err


def test_command_refuses_a_meaningless_subset_before_loading_the_model(tmp_path):
    """The same refusal as the Python API, as one line, before the (absent) model is loaded."""
    from .test_cli import assert_one_line_failure, run_script

    data = tmp_path / "data" / "clustering_stackoverflow"
    data.mkdir(parents=True)
    (data / "StackOverflow.txt").write_text("".join(f"title {i}\n" for i in range(20)))
    (data / "StackOverflow_gnd.txt").write_text("".join(f"{i % 13}\n" for i in range(20)))
    result = run_script("llm-embed-evaluate", tmp_path / "no-model", "--data-dir", tmp_path / "data",
                        "--tasks", "stackoverflow", cwd=tmp_path)
    assert_one_line_failure(result, "llm-embed-evaluate", "20 texts to 13 clusters already scores a V-measure of")


def test_command_prints_small_sample_warnings_and_marks_the_table(tokenizer, tmp_path, capsys):
    from llm_embed.evaluation import main

    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "data" / "stsb").mkdir(parents=True)
    write_stsb(tmp_path / "data" / "stsb" / "sts-test.csv", np.linspace(0, 5, 10))
    [result] = main([str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--tasks", "stsb",
                     "--output", str(tmp_path / "r.json"), "--no-progress"])
    captured = capsys.readouterr()
    assert "warning: STS-B: only 10 pairs" in captured.err
    assert "| STS-B | sts | spearman |" in captured.out and "* STS-B: only 10 pairs" in captured.out
    saved = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert saved["warnings"] == result.warnings and "only 10 pairs" in saved["warnings"][0]


def test_refusals_advise_raising_a_limit_only_where_one_cut_the_data(tmp_path):
    """``clusters=500`` on 200 texts used to say "raise the limit (at least 25000 texts)", and 2
    training rows for 3 classes "raise the training limit", with no limit set."""
    texts, labels = write_clustering(tmp_path, [str(i % 4) for i in range(200)])
    with pytest.raises(SampleTooSmallError, match="500 clusters for 200 texts") as error:
        ClusteringTask("K", texts, labels, n_clusters=500)
    assert "ask for fewer clusters (clusters=, now 500)" in str(error.value)
    assert "raise the limit" not in str(error.value) and "25000" not in str(error.value)
    with pytest.raises(SampleTooSmallError, match="raise the limit") as error:
        ClusteringTask("K", texts, labels, limit=3)
    assert "ask for fewer clusters" not in str(error.value)
    train = write_labelled_csv(tmp_path / "train.csv", ["a", "b"])
    test = write_labelled_csv(tmp_path / "test.csv", ["a", "b", "c"] * 5)
    with pytest.raises(SampleTooSmallError, match="2 training rows for 3 classes") as error:
        ClassificationTask("C", train, test)
    assert f"add rows to {train} (no limit cut them)" in str(error.value)
    assert "raise the training limit" not in str(error.value)
    big = write_labelled_csv(tmp_path / "big.csv", ["a", "b", "c"] * 20)
    with pytest.raises(SampleTooSmallError, match="raise the training limit"):
        ClassificationTask("C", big, test, limit_train=2)
