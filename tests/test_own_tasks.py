"""Tasks on your own files (``--task KIND:FILES key=value ...``) and the study's saved designs.

Each kind read from CSV, TSV and JSONL with renamed columns scores exactly as the same task built in
Python; bad files fail naming file:line and the key to pass; malformed specs are usage errors;
own and built-in tasks share one report; ``llm-embed-study --save-models`` keeps designs that load
(``load_lora`` / ``AutoModel``) and evaluate to the study's own scores; the example runs."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from llm_embed.evaluation import ClassificationTask, ClusteringTask, RetrievalTask, STSTask
from llm_embed.evaluation.task_specs import TaskSpecError, parse_task_spec, parse_task_specs
from llm_embed.evaluation.tasks import read_pairs

from .conftest import SHARED_DATA, tiny_model, triplet_rows

ROOT = Path(__file__).resolve().parents[1]
HAS_SCORING = all(importlib.util.find_spec(name) for name in ("sklearn", "scipy"))
needs_scoring = pytest.mark.skipif(not HAS_SCORING, reason="scoring needs scikit-learn and scipy")
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")
pytestmark = pytest.mark.filterwarnings("ignore::llm_embed.evaluation.SmallSampleWarning")

FORMATS = ("csv", "tsv", "jsonl")


def write(path: Path, header: list[str], rows: list) -> Path:
    """``rows`` as CSV, TSV (by the suffix) or JSONL objects with the ``header`` names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_model("llama", "causal", "mean", prompts={"query": "", "document": ""})
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own-tasks-model")
    model.save_pretrained(folder)
    return folder


TOPICS = ["cat", "car", "tree", "bank"]
PAIRS = [(f"the {TOPICS[i % 4]} number {i}", f"a {TOPICS[(i * 3) % 4]} text {i}", float(i % 5)) for i in range(12)]
LABELLED = [(f"a text about the {TOPICS[i % 4]}, item {i}", TOPICS[i % 4]) for i in range(60)]


def retrieval_files(folder: Path, fmt: str) -> tuple[Path, Path, Path]:
    docs = [(f"d{i}", f"title {i}", f"all about the {TOPICS[i % 4]} {i}") for i in range(10)]
    queries = [(f"q{i}", f"which {TOPICS[i % 4]} {i}?") for i in range(6)]
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(6)] + [("q0", "d4", 2)]
    qrels_suffix = "tsv" if fmt == "jsonl" else fmt
    return (write(folder / f"docs.{fmt}", ["key", "heading", "body"], docs),
            write(folder / f"asks.{fmt}", ["key", "question"], queries),
            write(folder / f"judged.{qrels_suffix}", ["q", "doc", "grade"], qrels))


RETRIEVAL_COLUMNS = {"doc_id": "key", "title": "heading", "text": "body", "query_id": "key", "query": "question",
                     "qrels_query_id": "q", "qrels_doc_id": "doc", "qrels_score": "grade"}


def as_words(columns: dict) -> list[str]:
    return [f"{role}={column}" for role, column in columns.items()]


# ----------------------------------------------------------------------------- each kind, each format


@needs_scoring
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_kind_from_each_format_scores_as_the_python_task(fmt, model, tmp_path):
    """A spec with renamed columns builds the same task as Python code on the same file, and the
    three formats of the same data score the same."""
    pairs = write(tmp_path / f"pairs.{fmt}", ["q", "d", "label"], PAIRS)
    train = write(tmp_path / f"train.{fmt}", ["body", "intent"], LABELLED[:40])
    test = write(tmp_path / f"test.{fmt}", ["body", "intent"], LABELLED[40:])
    texts = write(tmp_path / f"titles.{fmt}", ["headline", "topic"], LABELLED)
    corpus, queries, qrels = retrieval_files(tmp_path, fmt)
    labelled = {"text": "body", "label": "intent"}
    cases = [
        (["sts:" + str(pairs), "sentence1=q", "sentence2=d", "score=label"],
         STSTask("pairs", pairs, "table", columns={"sentence1": "q", "sentence2": "d", "score": "label"})),
        ([f"classification:{train},{test}", *as_words(labelled)],
         ClassificationTask("own", train, test, columns=labelled)),
        ([f"clustering:{texts}", "text=headline", "label=topic", "clusters=4"],
         ClusteringTask("titles", texts, None, 4, columns={"text": "headline", "label": "topic"})),
        ([f"retrieval:{corpus},{queries},{qrels}", *as_words(RETRIEVAL_COLUMNS)],
         RetrievalTask("own", corpus, queries, qrels, columns=RETRIEVAL_COLUMNS)),
    ]
    for words, python_task in cases:
        spec = parse_task_spec([*words, f"name={python_task.name}"])
        from_spec = spec.build().evaluate(model)
        from_python = python_task.evaluate(model)
        assert from_spec.to_dict() == from_python.to_dict(), spec.text
    # the same data in every format: the same items, so the same scores
    assert read_pairs(pairs, {"sentence1": "q", "sentence2": "d", "score": "label"}) == PAIRS
    task = parse_task_spec([f"retrieval:{corpus},{queries},{qrels}", *as_words(RETRIEVAL_COLUMNS)]).build()
    assert task.documents[0] == "title 0 all about the cat 0" and task.qrels["q0"] == {"d0": 1, "d4": 2}


def test_defaults_delimiter_names_and_a_missing_title(tmp_path):
    """Column defaults (sentence1/sentence2/score; BEIR's), a named delimiter, a corpus without titles."""
    path = tmp_path / "pairs.txt"
    path.write_text("sentence1;sentence2;score\n" + "".join(f"a {i};b {i};{i}\n" for i in range(4)))
    task = parse_task_spec([f"sts:{path}", "delimiter=semicolon"]).build()
    assert task.pairs[1] == ("a 1", "b 1", 1.0) and task.name == "pairs"
    with pytest.raises(ValueError, match="cannot tell its format from the name"):
        parse_task_spec([f"sts:{path}"]).build()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d0", "text": "no title here"}\n{"_id": "d1", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q0", "text": "here"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    spec = parse_task_spec(f"retrieval:{tmp_path}/corpus.jsonl,{tmp_path}/queries.jsonl,{tmp_path}/qrels.tsv")
    task = spec.build()
    assert task.documents == ["no title here", "x"] and task.name == tmp_path.name  # the files' folder


# ----------------------------------------------------------------------------- bad files name the line


def test_bad_files_name_the_file_the_line_and_the_key(tmp_path):
    pairs = write(tmp_path / "pairs.csv", ["a", "b", "label"], PAIRS)
    with pytest.raises(ValueError, match=r"pairs.csv:1: no column 'score' \(columns: a, b, label\); pass "
                                         r"score=<column>"):
        parse_task_spec([f"sts:{pairs}", "sentence1=a", "sentence2=b"]).build()
    rows = write(tmp_path / "rows.jsonl", ["q", "d", "label"], PAIRS)
    lines = rows.read_text().splitlines()
    lines[2] = json.dumps({"q": "x", "d": "y", "grade": 1})
    rows.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:3: no field 'label' \(fields: q, d, grade\); pass "
                                         r"score=<field>"):
        parse_task_spec([f"sts:{rows}", "sentence1=q", "sentence2=d", "score=label"]).build()
    lines[2] = "{not json"
    rows.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:3: not valid JSON"):
        parse_task_spec([f"sts:{rows}", "sentence1=q", "sentence2=d", "score=label"]).build()
    bad_score = write(tmp_path / "scores.tsv", ["q", "d", "label"], [*PAIRS[:3], ("x", "y", "high"), *PAIRS[3:]])
    with pytest.raises(ValueError, match=r"scores.tsv:5: score 'high' \(column 'label'\) is not a finite number"):
        parse_task_spec([f"sts:{bad_score}", "sentence1=q", "sentence2=d", "score=label"]).build()
    short = tmp_path / "short.csv"
    short.write_text("text,label\nfine,a\nfine too,b\nno label here\n")
    with pytest.raises(ValueError, match=r"short.csv:4: only 1 cells, no column 'label' for label"):
        parse_task_spec([f"classification:{short},{short}"]).build()
    # an unquoted comma: before, read as text "hello" with " world" dropped
    wide = tmp_path / "wide.csv"
    wide.write_text("text,label\nfine,a\nhello, world,b\n")
    with pytest.raises(ValueError, match=r"wide.csv:3: 3 cells, the header has 2; a field holds the delimiter "
                                         r"\(','\): quote it"):
        parse_task_spec([f"classification:{wide},{wide}"]).build()
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("text;label\na;b\n")
    with pytest.raises(ValueError, match=r"semi.csv:1: no column 'text' \(columns: text;label\) \(the header is one "
                                         r"column: is the delimiter ';'\? pass delimiter=...\); pass text=<column>"):
        parse_task_spec([f"clustering:{semicolons}"]).build()
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td0\t0.5\n")
    corpus, queries, _ = retrieval_files(tmp_path, "jsonl")
    with pytest.raises(ValueError, match=r"qrels.tsv:2: qrels_score '0.5' \(column 'score'\) is not a whole number"):
        parse_task_spec([f"retrieval:{corpus},{queries},{qrels}"]).build()
    with pytest.raises(FileNotFoundError, match=f"no such file {tmp_path}/nope.csv \\(looked at {tmp_path}/nope.csv"):
        parse_task_spec([f"sts:{tmp_path}/nope.csv"]).build()


def test_repeated_ids_and_scores_that_are_not_numbers_are_refused(tmp_path):
    """A repeated document id counted as two documents (nDCG@10 reached 163), a repeated query id kept
    its last text, and a gold score of nan made the task's Spearman nan: each is refused, naming the file."""
    corpus, queries, qrels = retrieval_files(tmp_path, "jsonl")
    spec = [f"retrieval:{corpus},{queries},{qrels}", *as_words(RETRIEVAL_COLUMNS)]
    parse_task_spec(spec).build()  # the files as written are fine
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": "d3", "heading": "again", "body": "the cat again"}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl: document id 'd3' names records 4 and 11"):
        parse_task_spec(spec).build()
    corpus, queries, qrels = retrieval_files(tmp_path, "jsonl")
    with open(queries, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": "q1", "question": "another text"}) + "\n")
    with pytest.raises(ValueError, match=r"asks.jsonl: query id 'q1' names records 2 and 7"):
        parse_task_spec(spec).build()
    corpus, queries, qrels = retrieval_files(tmp_path, "jsonl")
    with open(qrels, "a", encoding="utf-8") as handle:
        handle.write("q0\td4\t1\n")
    with pytest.raises(ValueError, match=r"judged.tsv: judgement \(query -> document\) id 'q0 -> d4' names records"):
        parse_task_spec(spec).build()
    for bad in ("nan", "inf"):
        pairs = write(tmp_path / "pairs.csv", ["sentence1", "sentence2", "score"], [*PAIRS[:4], ("x", "y", bad)])
        with pytest.raises(ValueError, match=rf"pairs.csv:6: score '{bad}' \(column 'score'\) is not a finite number"):
            parse_task_spec([f"sts:{pairs}"]).build()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_an_empty_label_is_refused_by_line(tmp_path, suffix):
    """An empty label cell was read as a class named "": with 4 real topics, k-means clustered into 5
    and the classifier learned and was scored on a "" class. The two-file clustering form refused it
    already; a table (one-file clustering, classification) refuses it too, naming the line."""
    rows = [("a cat", "pets"), ("a dog", "pets"), ("stocks fell", ""), ("rates rose", "money")]
    table = write(tmp_path / f"heads{suffix}", ["text", "category"], rows)  # Banking77's column names
    line = 3 if suffix == ".jsonl" else 4  # a table's header is line 1
    message = rf"heads{suffix}:{line}: label '' \(column 'category'\) is not a label: it is empty"
    with pytest.raises(ValueError, match=message):
        ClusteringTask("own", table, None, 2)
    with pytest.raises(ValueError, match=message):
        ClassificationTask("own", table, table)


@pytest.mark.parametrize("reverse", [False, True])
def test_tied_documents_rank_as_pytrec_eval_ranks_them(tmp_path, reverse):
    """The same text under two ids ties exactly; topk ordered such ties arbitrarily (the relevant copy
    second in about half the queries), where BEIR's pytrec_eval ranks a tie by document id, descending.
    Here q0's relevant copy is "a" (its duplicate "b" ranks first: nDCG@10 1/log2(3)) and q1's is "b"
    (first: 1.0), whatever the order of the corpus file."""
    docs = [("a", "", "the same text"), ("b", "", "the same text"), ("c", "", "something else")]
    corpus = write(tmp_path / "docs.csv", ["_id", "title", "text"], docs[::-1] if reverse else docs)
    queries = write(tmp_path / "queries.csv", ["_id", "text"], [("q0", "x"), ("q1", "y")])
    qrels = write(tmp_path / "qrels.tsv", ["query-id", "corpus-id", "score"], [("q0", "a", 1), ("q1", "b", 1)])
    task = RetrievalTask("ties", corpus, queries, qrels)
    vector = {"a": [1.0, 0.0], "b": [1.0, 0.0], "c": [0.0, 1.0]}
    result = task.score({"corpus": np.array([vector[doc] for doc in task.corpus_ids]),
                         "queries": np.array([[1.0, 0.1], [1.0, 0.1]])})
    assert dict(zip(result.per_item["query_ids"], result.per_item["ndcg_at_10"])) == pytest.approx(
        {"q0": 1 / np.log2(3), "q1": 1.0})


def test_a_tsv_is_read_without_csv_quoting(tmp_path):
    """A TSV text opening with an unclosed quote swallowed the next lines, and quotes were dropped."""
    from llm_embed.evaluation.tasks import read_records

    path = tmp_path / "texts.tsv"
    path.write_text('text\tlabel\n"Stop," he said\ta\n"unclosed quote\tb\nplain\tc\n', encoding="utf-8")
    rows = read_records(path, {"text": "text", "label": "label"})
    assert [row["text"] for row in rows] == ['"Stop," he said', '"unclosed quote', "plain"]
    csv_path = tmp_path / "texts.csv"
    csv_path.write_text('text,label\n"Stop, he said",a\n', encoding="utf-8")
    assert read_records(csv_path, {"text": "text", "label": "label"})[0]["text"] == "Stop, he said"


def test_a_csv_with_an_unclosed_or_stray_quote_is_refused_by_line(tmp_path):
    """In a CSV (quoted), an unclosed quote read every later line into one cell: 5 pairs became 2, scored
    without a word; a quote inside an unquoted field was dropped."""
    from llm_embed.evaluation.tasks import read_records

    path = tmp_path / "pairs.csv"
    columns = {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}
    path.write_text('sentence1,sentence2,score\na,b,1\n"open,c,2\nd,e,3\nf,g,4\nh,i,5\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs.csv:6: not valid CSV \(unexpected end of data\)"):
        read_records(path, columns)
    path.write_text('sentence1,sentence2,score\na,"5" screen",1\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs.csv:2: not valid CSV .*double its quotes"):
        read_records(path, columns)


def test_a_byte_order_mark_is_skipped_and_other_encodings_are_named(tmp_path):
    """Excel's UTF-8 CSV starts with a BOM, which stuck to the first column's name ("no column
    'sentence1'"); a Latin-1 file gave a bare codec error without the file's name."""
    from llm_embed.evaluation.tasks import read_records

    path = tmp_path / "pairs.csv"
    path.write_bytes("sentence1,score\ncafé,1\n".encode("utf-8-sig"))
    assert read_records(path, {"sentence1": "sentence1", "score": "score"}) == [{"sentence1": "café", "score": "1"}]
    path.write_bytes("sentence1,score\ncafé,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"pairs.csv is not UTF-8 text .*save it as UTF-8"):
        read_records(path, {"sentence1": "sentence1", "score": "score"})


@pytest.mark.parametrize("words, message", [
    (["stss:a.csv"], "unknown kind 'stss'; write KIND:FILE\\[,FILE...\\] with KIND one of sts, classification"),
    (["a.csv"], "no kind in 'a.csv'"),
    (["retrieval:a.jsonl,b.jsonl"], "retrieval takes 3 file\\(s\\), CORPUS,QUERIES,QRELS, .*got 2"),
    (["classification:a.csv"], "classification takes 2 file\\(s\\), TRAIN,TEST"),
    (["clustering:a.txt,b.txt,c.txt"], "clustering takes 1 or 2 file\\(s\\), TEXTS or TEXTS,LABELS"),
    (["sts:a.csv", "colour=red"], "unknown key 'colour' for sts; keys: sentence1, sentence2, score, delimiter, name"),
    (["sts:a.csv", "score"], "'score' is not key=value"),
    (["sts:a.csv", "limit=ten"], "limit must be a whole number above 0"),
    (["sts:a.csv", "delimiter=;;"], "delimiter must be one character"),
    (["sts:a.csv", "name=x", "name=y"], "name is given twice"),
    (["clustering:a.txt,b.txt", "text=t"], "text are for one table of texts and labels"),
])
def test_malformed_specs_name_the_problem_and_the_fix(words, message):
    with pytest.raises(TaskSpecError, match=message):
        parse_task_spec(words)


def test_spec_names_must_be_unique():
    with pytest.raises(TaskSpecError, match="two --task specs are named 'pairs'; give each a name="):
        parse_task_specs([["sts:a/pairs.csv"], ["sts:b/pairs.tsv"]])
    assert [s.name for s in parse_task_specs([["sts:a/pairs.csv"], ["sts:b/pairs.tsv", "name=other"]])] == [
        "pairs", "other"]


# ----------------------------------------------------------------------------- the command


@needs_scoring
def test_command_runs_own_tasks_without_a_data_folder(model_dir, tmp_path, capsys, monkeypatch):
    from llm_embed.evaluation import main

    monkeypatch.chdir(tmp_path)  # relative paths from the current folder; no ../shared/data needed
    write(tmp_path / "pairs.tsv", ["q", "d", "label"], PAIRS)
    write(tmp_path / "titles.jsonl", ["headline", "topic"], LABELLED)
    results = main([str(model_dir), "--task", "sts:pairs.tsv", "sentence1=q", "sentence2=d", "score=label",
                    "name=Mine", "--task", "clustering:titles.jsonl", "text=headline", "label=topic",
                    "--data-dir", "absent", "--output", "r.json", "--no-progress"])
    assert [r.task for r in results] == ["Mine", "titles"]
    assert "| Mine | sts | spearman |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["backbone"] is None  # a LoRA artifact's --backbone override is recorded here
    assert saved["tasks"] == ["sts:pairs.tsv sentence1=q sentence2=d score=label name=Mine",
                              "clustering:titles.jsonl text=headline label=topic"]
    assert len(saved["results"][0]["per_item"]["cosine"]) == 12


@needs_scoring
@needs_shared_data
def test_builtin_and_own_tasks_in_one_report(model_dir, tmp_path, capsys):
    from llm_embed.evaluation import main

    pairs = write(tmp_path / "pairs.csv", ["q", "d", "label"], PAIRS)
    results = main([str(model_dir), "--data-dir", str(SHARED_DATA), "--tasks", "stsb", "sick", "--limit", "10",
                    "--task", f"sts:{pairs}", "sentence1=q", "sentence2=d", "score=label", "--no-progress"])
    assert [r.task for r in results] == ["STS-B", "SICK-R", "pairs"]
    out = capsys.readouterr().out
    assert "| STS-B | sts |" in out and "| pairs | sts |" in out
    with pytest.raises(ValueError, match="more than one task is named 'STS-B'"):
        main([str(model_dir), "--data-dir", str(SHARED_DATA), "--tasks", "stsb", "--limit", "10",
              "--task", f"sts:{pairs}", "sentence1=q", "sentence2=d", "score=label", "name=STS-B"])


def test_console_exit_codes(model_dir, tmp_path):
    """0 on success, 1 with one line for bad input (a missing file, a missing column), 2 for usage."""
    from .test_cli import assert_one_line_failure, run_script

    write(tmp_path / "pairs.csv", ["q", "d", "label"], PAIRS)
    usage = run_script("llm-embed-evaluate", model_dir, "--task", "stss:pairs.csv", cwd=tmp_path)
    assert usage.returncode == 2 and "unknown kind 'stss'" in usage.stderr
    usage = run_script("llm-embed-evaluate", model_dir, "--task", "sts:pairs.csv", "colour=red", cwd=tmp_path)
    assert usage.returncode == 2 and "unknown key 'colour'" in usage.stderr
    usage = run_script("llm-embed-evaluate", model_dir, "--task", "sts:pairs.csv", "--limit", "5", cwd=tmp_path)
    assert usage.returncode == 2 and "--limit caps the built-in tasks only, and none runs" in usage.stderr
    missing = run_script("llm-embed-evaluate", model_dir, "--task", "sts:nope.csv", cwd=tmp_path)
    assert_one_line_failure(missing, "llm-embed-evaluate", "no such file nope.csv")
    column = run_script("llm-embed-evaluate", model_dir, "--task", "sts:pairs.csv", "sentence1=q", "sentence2=d",
                        cwd=tmp_path)
    assert_one_line_failure(column, "llm-embed-evaluate", "pairs.csv:1: no column 'score' (columns: q, d, label); "
                                                          "pass score=<column>")
    usage = run_script("llm-embed-study", "--task", "sts:pairs.csv", "score", cwd=tmp_path)
    assert usage.returncode == 2 and "'score' is not key=value" in usage.stderr
    usage = run_script("llm-embed-study", "--save-merged", cwd=tmp_path)
    assert usage.returncode == 2 and "pass --save-models too" in usage.stderr
    if HAS_SCORING:
        ok = run_script("llm-embed-evaluate", model_dir, "--task", "sts:pairs.csv", "sentence1=q", "sentence2=d",
                        "score=label", "--no-progress", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert "| pairs | sts | spearman |" in ok.stdout


# ----------------------------------------------------------------------------- the study keeps its models


@needs_scoring
def test_study_saves_designs_that_evaluate_to_its_own_scores(tiny_backbone_dir, tmp_path, capsys):
    """Designs 1 and 5 (LoRA adapters + head) and design 2 merged, on own tasks only: each saved
    design loads (load_lora / AutoModel) and llm-embed-evaluate scores it as the study did; the
    paired tests run on the own tasks."""
    pytest.importorskip("peft")
    from transformers import AutoModel

    from llm_embed import LLMEmbeddingModel, study
    from llm_embed.evaluation import main as evaluate
    from llm_embed.evaluation.runner import LORA_BASE_FILE, load_model
    from llm_embed.lora import load_lora

    train = tmp_path / "triplets.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in triplet_rows(16)))
    pairs = write(tmp_path / "pairs.csv", ["q", "d", "label"], PAIRS)
    texts = write(tmp_path / "titles.jsonl", ["headline", "topic"], LABELLED)
    own = [["--task", f"sts:{pairs}", "sentence1=q", "sentence2=d", "score=label", "name=Mine"],
           ["--task", f"clustering:{texts}", "text=headline", "label=topic"]]
    config = ["--num-latents", "4", "--pooling-heads", "2", "--pooling-head-dim", "8", "--max-seq-length", "64"]
    common = ["--backbone", str(tiny_backbone_dir), "--train-files", str(train), "--max-steps", "2",
              "--batch-size", "4", "--score-workers", "1", "--score-threads", "1", "--eval-batch-size", "16",
              "--no-plot", *config, *own[0], *own[1]]
    saved = tmp_path / "models"
    report = study.main([*common, "--output-dir", str(tmp_path / "study"), "--designs", "1", "5",
                         "--save-models", str(saved)])
    assert {t["task"] for t in report["tests"]} == {"Mine", "titles"}  # paired tests on own tasks
    merged = study.main([*common, "--output-dir", str(tmp_path / "study-merged"), "--designs", "2",
                         "--save-models", str(saved), "--save-merged"])
    runs = {run["design"]: run for run in report["runs"] + merged["runs"]}
    assert sorted(p.name for p in saved.iterdir()) == ["design1_seed0", "design2_seed0", "design5_seed0"]
    assert (saved / "design5_seed0" / LORA_BASE_FILE).is_file()
    assert (saved / "design5_seed0" / "adapter_model.safetensors").is_file()
    assert not (saved / "design5_seed0" / "model.safetensors").exists()
    assert (saved / "design2_seed0" / "model.safetensors").is_file()
    assert runs[5]["saved_bytes"] < runs[2]["saved_bytes"] / 2
    assert not [p for p in saved.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    for design, run in runs.items():
        capsys.readouterr()
        results = evaluate([run["saved_model"], *own[0], *own[1], "--no-progress"])
        for result, expected in zip(results, run["results"]):
            assert result.task == expected["task"]
            assert result.main_score == pytest.approx(expected["main_score"], abs=1e-6), (design, result.task)
            if result.category == "sts":
                np.testing.assert_allclose(result.per_item["cosine"], expected["per_item"]["cosine"], atol=1e-6)

    # the two loaders a Python user has: AutoModel (merged) and load_lora on a rebuilt base
    assert type(AutoModel.from_pretrained(saved / "design2_seed0")).__name__ == "LLMEmbeddingModel"
    base = json.loads((saved / "design5_seed0" / LORA_BASE_FILE).read_text())
    assert base["backbone"] == str(tiny_backbone_dir.resolve()) and base["pooling"] == "multi_layer"
    rebuilt = LLMEmbeddingModel.from_backbone(base["backbone"], base["attention"], base["pooling"], **base["config"])
    with_adapters = load_lora(rebuilt, str(saved / "design5_seed0")).eval()
    texts = [p[0] for p in PAIRS]
    np.testing.assert_allclose(with_adapters.encode(texts), load_model(saved / "design5_seed0").encode(texts),
                               atol=1e-5)


# ----------------------------------------------------------------------------- the example


@needs_scoring
def test_example_writes_its_files_and_prints_the_report(model_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_own_data", ROOT / "examples" / "evaluate_own_data.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--model", str(model_dir), "--keep", str(tmp_path)])
    assert [r.task for r in results] == ["FAQ-pairs", "Intents", "FAQ-search", "Headlines"]
    assert [r.category for r in results] == ["sts", "classification", "retrieval", "clustering"]
    out = capsys.readouterr().out
    assert "llm-embed-evaluate" in out and "| Headlines | clustering | v_measure |" in out
    assert {p.suffix for p in tmp_path.iterdir()} >= {".csv", ".tsv", ".jsonl"}
    assert len(json.loads((tmp_path / "results.json").read_text())["results"]) == 4


@needs_shared_data
def test_builtin_files_read_as_before_through_the_shared_reader():
    """The built-in layouts, now read by read_records, give the rows a plain csv/json read gives."""
    from llm_embed.evaluation.tasks import read_labelled_csv, read_sick, read_stsb

    with open(SHARED_DATA / "stsb" / "sts-test.csv", encoding="utf-8") as handle:
        plain = [(r[5], r[6], float(r[4])) for r in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert read_stsb(SHARED_DATA / "stsb" / "sts-test.csv") == plain
    with open(SHARED_DATA / "sick" / "SICK_test_annotated.txt", encoding="utf-8") as handle:
        plain = [(r["sentence_A"], r["sentence_B"], float(r["relatedness_score"]))
                 for r in csv.DictReader(handle, delimiter="\t")]
    assert read_sick(SHARED_DATA / "sick" / "SICK_test_annotated.txt") == plain
    with open(SHARED_DATA / "banking77" / "test.csv", encoding="utf-8") as handle:
        plain = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    assert list(zip(*read_labelled_csv(SHARED_DATA / "banking77" / "test.csv"))) == plain


def test_study_refuses_to_mix_saved_forms_in_one_folder(tmp_path):
    """A merged save over an adapters folder (or the reverse) would leave both and load the older."""
    from llm_embed.evaluation.runner import LORA_BASE_FILE
    from llm_embed.study import check_saved_form

    adapters, merged = tmp_path / "design5_seed0", tmp_path / "design2_seed0"
    adapters.mkdir()
    (adapters / LORA_BASE_FILE).write_text("{}")
    (adapters / "adapter_config.json").write_text("{}")
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    check_saved_form(adapters, merged=False)  # the same form again: a rerun overwrites it
    check_saved_form(merged, merged=True)
    check_saved_form(tmp_path / "absent", merged=True)
    with pytest.raises(ValueError, match="holds LoRA adapters from an earlier study; saving a merged model"):
        check_saved_form(adapters, merged=True)
    with pytest.raises(ValueError, match="holds a merged model from an earlier study; saving LoRA adapters"):
        check_saved_form(merged, merged=False)


def docs_command(doc: str, marker: str) -> list[str]:
    """The words of the bash command in ``doc`` (a docs/ file) that contains ``marker``, its program
    left out: line continuations joined, comments dropped."""
    import re
    import shlex

    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if marker in line:
                return shlex.split(line, comments=True)[1:]
    raise AssertionError(f"no command with {marker!r} in docs/{doc}")


@needs_scoring
def test_the_documented_command_with_several_tasks_runs(model_dir, tmp_path, monkeypatch, capsys):
    """docs/evaluation.md's example with three --task specs and a built-in task: its classification
    and retrieval specs both defaulted to the folder's name ("two tasks named ...") until they got a
    name= each. Run as written on small files of the columns it names."""
    from llm_embed.evaluation import main

    monkeypatch.chdir(tmp_path)
    words = docs_command("evaluation.md", "--task sts:pairs.csv sentence1=question")
    assert words[0] == "path/to/model" and "--data-dir" not in words
    write(tmp_path / "pairs.csv", ["question", "answer", "similarity"], PAIRS)
    write(tmp_path / "train.tsv", ["utterance", "intent"], LABELLED[:40])
    write(tmp_path / "test.tsv", ["utterance", "intent"], LABELLED[40:])
    docs = [(f"d{i}", f"all about the {TOPICS[i % 4]} {i}") for i in range(10)]
    write(tmp_path / "docs.jsonl", ["id", "body"], docs)
    questions = [(f"q{i}", f"which {TOPICS[i % 4]} {i}?") for i in range(6)]
    write(tmp_path / "questions.jsonl", ["id", "question"], questions)
    write(tmp_path / "qrels.tsv", ["query-id", "corpus-id", "score"], [(f"q{i}", f"d{i}", 1) for i in range(6)])
    (tmp_path / "data" / "stsb").mkdir(parents=True)
    (tmp_path / "data" / "stsb" / "sts-test.csv").write_text(
        "".join(f"main\tfile\t2012\t{i}\t{score}\t{a}\t{b}\n" for i, (a, b, score) in enumerate(PAIRS)))
    results = main([str(model_dir), *words[1:], "--data-dir", "data", "--no-progress"])
    assert [r.task for r in results] == ["STS-B", "FAQ", "Intents", "QA"]
    assert json.loads((tmp_path / "results.json").read_text())["results"][3]["task"] == "QA"


# ----------------------------------------------------------------------------- prompts of the tasks


@needs_scoring
def test_retrieval_falls_back_like_encode_query_and_bad_prompt_names_fail_first(tokenizer, tmp_path):
    """Without query / document prompts a model is evaluated without them (``encode_query``'s rule,
    never ``default_prompt_name``), instead of failing after the earlier tasks ran; an explicit
    prompt name the model lacks fails before any task embeds anything."""
    from llm_embed.evaluation import evaluate

    model = tiny_model("llama", "causal", "mean", prompts={"query": "Q: ", "sts": "similar: "},
                       default_prompt_name="sts")
    model.tokenizer = tokenizer
    corpus, queries, qrels = retrieval_files(tmp_path, "csv")
    task = RetrievalTask("own", corpus, queries, qrels, columns=RETRIEVAL_COLUMNS)
    embedded = task.embed(model)
    np.testing.assert_array_equal(embedded["queries"], model.encode_query(task.queries))
    np.testing.assert_array_equal(embedded["corpus"], model.encode_document(task.documents))
    np.testing.assert_array_equal(embedded["corpus"], model.encode(task.documents, prompt=""))
    assert not np.array_equal(embedded["corpus"], model.encode(task.documents))  # the default prompt differs
    # query_prompt=none: no prompt at all, not the model's default one
    spec = parse_task_spec([f"retrieval:{corpus},{queries},{qrels}", *as_words(RETRIEVAL_COLUMNS),
                            "query_prompt=none", "document_prompt=sts"]).build()
    embedded = spec.embed(model)
    np.testing.assert_array_equal(embedded["queries"], model.encode(task.queries, prompt=""))
    np.testing.assert_array_equal(embedded["corpus"], model.encode(task.documents, prompt_name="sts"))

    pairs = write(tmp_path / "pairs.csv", ["q", "d", "label"], PAIRS)
    calls = []
    spy = type("Spy", (), {"config": model.config,
                           "encode": lambda self, texts, **kw: calls.append(kw) or model.encode(texts, **kw)})()
    first = STSTask("first", pairs, "table", columns={"sentence1": "q", "sentence2": "d", "score": "label"})
    mistyped = RetrievalTask("own", corpus, queries, qrels, columns=RETRIEVAL_COLUMNS, document_prompt_name="doc")
    with pytest.raises(ValueError, match=r"task own: document_prompt='doc' .* whose prompts are \['query', 'sts'\]"):
        evaluate(spy, [first, mistyped], show_progress_bar=False)
    assert calls == []
    assert [r.task for r in evaluate(spy, [first, task], show_progress_bar=False)] == ["first", "own"]
    # "document" is a prompt of every model ("" where config.prompts has none), as in encode
    named = RetrievalTask("own", corpus, queries, qrels, columns=RETRIEVAL_COLUMNS, document_prompt_name="document")
    np.testing.assert_array_equal(named.embed(model)["corpus"], model.encode_document(task.documents))
    assert [r.task for r in evaluate(spy, [named], show_progress_bar=False)] == ["own"]
