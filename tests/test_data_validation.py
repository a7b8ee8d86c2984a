"""Training data faults fail when the dataset is built (before the first step, when nothing would be
saved), naming the file and line (JSONL) or the row index (lists, datasets) and the fix."""

import json
import re

import pytest

from llm_embed.data import TripletDataset

from .conftest import triplet_rows


def write_jsonl(path, rows, blank_lines_before: int = 0) -> None:
    """Rows as JSONL; dict rows are dumped, str rows written as they are (for malformed lines)."""
    lines = [""] * blank_lines_before + [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_null_negative_names_file_line_and_fix(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [*triplet_rows(2), {"query": "q", "positive": "p", "negative": None}])
    with pytest.raises(TypeError, match=re.escape(f"{path}:3: 'negative' is null")) as info:
        TripletDataset.from_any(path)
    assert "give it a text" in str(info.value) and "drop the field in every row" in str(info.value)


def test_null_inside_negatives_names_row_item_and_fix():
    rows = [*triplet_rows(3, negatives=2), {"query": "q", "positive": "p", "negatives": ["n", None]}]
    with pytest.raises(TypeError, match=r"row 3: negative 1 is null; give it a text, or remove the row"):
        TripletDataset(rows)


@pytest.mark.parametrize("value, kind", [(3, "int"), ({"text": "n"}, "dict")])
def test_negatives_that_are_not_a_list_are_refused(value, kind):
    rows = [{"query": "q", "positive": "p", "negatives": value}]
    with pytest.raises(TypeError, match=rf"row 0: 'negatives' must be a string or a list of strings, got {kind}"):
        TripletDataset(rows)


def test_numbered_negatives_are_read_in_order():
    """sentence-transformers' n-tuple rows (anchor, positive, negative_1 ... negative_n), as the Hub's
    mined hard-negative datasets name them, were accepted with no negatives at all: training ran on
    in-batch negatives only and the mined ones were dropped without a word."""
    rows = [{"anchor": f"a{i}", "positive": f"p{i}", "negative_2": f"second{i}", "negative_10": f"tenth{i}",
             **{f"negative_{n}": f"n{n}-{i}" for n in (1, *range(3, 10))}} for i in range(2)]
    data = TripletDataset(rows)
    assert data[1]["negatives"] == ["n1-1", "second1", *[f"n{n}-1" for n in range(3, 10)], "tenth1"]


@pytest.mark.parametrize("row, message", [
    ({"query": "q", "anchor": "another question", "positive": "p"}, "has both 'query' and 'anchor'"),
    ({"query": "q", "positive": "p", "negative": "n", "negatives": ["m"]}, "'negative' and 'negatives'; keep one"),
    ({"query": "q", "positive": "p", "negative": "n", "negative_1": "m"}, "'negative' and 'negative_1 ...'"),
    ({"query": "q", "positive": "p", "negative_1": "n", "negative_3": "m"}, "without gaps, found negative_1, "
                                                                            "negative_3"),
    ({"query": "q", "positive": "p", "neg": ["n"]}, "field 'neg', which would not be read as hard negatives"),
    ({"query": "q", "positive": "p", "hard_negatives": ["n"], "negative1": "m"},
     "fields 'hard_negatives', 'negative1', which would not"),
])
def test_fields_that_would_be_dropped_are_refused(row, message):
    """A row with both query and anchor trained on the query and dropped the anchor; hard negatives
    under another name (FlagEmbedding's "neg", "hard_negatives") were left out of training."""
    with pytest.raises(ValueError, match=re.escape(f"row 0 {message}") if "has" in message else re.escape(message)):
        TripletDataset([row])


def test_other_fields_are_still_ignored():
    row = {"query": "q", "positive": "p", "id": 3, "negation": "x", "score": 0.5}
    assert TripletDataset([row])[0] == {"query": "q", "positive": "p", "negatives": []}


def test_negative_counts_differing_anywhere_name_counts_first_lines_and_fix(tmp_path):
    """Rows far apart (never in one batch of a small test) still fail up front, each count with the
    line of its first row, line numbers counted past blank lines."""
    path = tmp_path / "rows.jsonl"
    rows = triplet_rows(6, negatives=1) + triplet_rows(2, negatives=0) + triplet_rows(1, negatives=2)
    write_jsonl(path, rows, blank_lines_before=2)
    with pytest.raises(ValueError, match="different numbers of hard negatives") as info:
        TripletDataset.from_any(path)
    message = str(info.value)
    assert f"0 (first at {path}:9)" in message
    assert f"1 (first at {path}:3)" in message
    assert f"2 (first at {path}:11)" in message
    assert "give every row the same number of hard negatives (or none)" in message


def test_negative_counts_differing_in_a_list_name_row_indices():
    rows = triplet_rows(3, negatives=1) + triplet_rows(1, negatives=0)
    with pytest.raises(ValueError, match=r"0 \(first at row 3\), 1 \(first at row 0\); give every row the same"):
        TripletDataset.from_any(rows)


def test_non_utf8_byte_names_line_column_offset_and_fix(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(triplet_rows(1)[0]).encode() + b"\n"
    bad = '{"query": "caf\u00e9", "positive": "p"}\n'.encode("latin-1")
    path.write_bytes(good + bad)
    column = bad.index(b"\xe9") + 1
    with pytest.raises(ValueError) as info:
        TripletDataset.from_any(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: byte 0xe9 at column {column} (file byte offset {len(good) + column - 1})")
    assert "re-encode the file as UTF-8" in message
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in triplet_rows(2)).encode() + b"\n")
    assert len(TripletDataset.from_any(path)) == 2


@pytest.mark.parametrize("line, kind", [('["q", "p"]', "array"), ('"q"', "string"), ("null", "null")])
def test_jsonl_line_that_is_not_an_object_names_file_line(tmp_path, line, kind):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [*triplet_rows(1), line])
    with pytest.raises(ValueError,
                       match=re.escape(f"{path}:2 holds a JSON {kind}, not an object; write each line as")):
        TripletDataset.from_any(path)


def test_bad_row_in_jsonl_names_file_and_line_not_row_index(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [*triplet_rows(2), {"query": "q"}], blank_lines_before=3)
    with pytest.raises(ValueError, match=re.escape(f"{path}:6 is missing positive; it has fields ['query']")):
        TripletDataset.from_any(path)


def test_rows_of_a_datasets_dataset_are_named_by_index():
    datasets = pytest.importorskip("datasets")
    rows = [{"query": "q", "positive": "p", "negative": "n"}, {"query": "q", "positive": "p", "negative": None}]
    with pytest.raises(TypeError, match="row 1: 'negative' is null"):
        TripletDataset.from_any(datasets.Dataset.from_list(rows))


def test_missing_file_and_empty_file_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl does not exist; pass a JSONL file with one"):
        TripletDataset.from_any(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=re.escape(f"{empty} holds no rows; give at least one")):
        TripletDataset.from_any(empty)


def test_a_mapping_of_splits_asks_for_one_split():
    with pytest.raises(TypeError, match=r"pick one split, e.g. data\['train'\]"):
        TripletDataset.from_any({"train": triplet_rows(2)})


@pytest.mark.parametrize("limit", [0, -3])
def test_row_limits_below_one_are_refused(tmp_path, limit):
    """``limit=0`` used to keep 1 row (the row was appended before the limit was tested)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in triplet_rows(3)))
    with pytest.raises(ValueError, match=f"row limit {limit}: give a whole number of rows of at least 1"):
        TripletDataset.from_any(data, limit)
    with pytest.raises(ValueError, match="at least 1"):
        TripletDataset.from_any(triplet_rows(3), limit)
    assert len(TripletDataset.from_any(data, 2)) == 2 and len(TripletDataset.from_any(data, 9)) == 3


def test_a_missing_relative_path_names_the_current_folder(tmp_path, monkeypatch):
    """Run from another folder than the README's, ../shared/data/... was only said not to exist."""
    monkeypatch.chdir(tmp_path)
    expected = f"data/rows.jsonl does not exist (looked at {tmp_path}/data/rows.jsonl, relative to the current " \
        f"folder {tmp_path})"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        TripletDataset.from_any("data/rows.jsonl")


def test_a_missing_eval_file_is_named_evaluation_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="^evaluation data .*nope.jsonl does not exist"):
        TripletDataset.from_any(tmp_path / "nope.jsonl", what="evaluation data")
