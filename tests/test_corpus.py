"""``llm-embed-encode`` (llm_embed.corpus): a corpus embedded into shards equals ``model.encode`` in file
order; a killed run, rerun, and a run on two processes give the same files byte for byte as one run
without interruption; bad input and a resume with other arguments are refused with the reason.

The runs that must be separate processes (killed, two ranks, the console script) are subprocesses;
they share one reference run and run with one thread each, as the reference does, so that their
files can be compared byte for byte."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_embed.corpus import FAIL_AFTER_SHARDS_ENV, MANIFEST, RUN_FILE, load_shards, main, shard_name

from .conftest import SHARED_DATA, tiny_model

ROOT = Path(__file__).resolve().parents[1]

PROMPT = "query"  # a prompt with a non-empty prefix, so that passing it through matters
FIELDS = ["--id-field", "doc_id", "--text-field", "body", "--title-field", "heading"]
SHARD_SIZE = 4


def corpus_rows(n: int = 23) -> list[dict]:
    """Rows with renamed fields and texts of varied length; some without a title (BEIR's empty title)."""
    words = ["cat", "river", "bank", "moon", "song", "bread", "chess", "coffee", "rain", "phone"]
    rows = []
    for i in range(n):
        body = " ".join(words[(i + j) % len(words)] for j in range(1 + (i * 7) % 13)) + f" number {i}"
        rows.append({"doc_id": f"d{i}", "heading": "" if i % 5 == 0 else f"On the {words[i % len(words)]}",
                     "body": body})
    return rows


def expected_texts(rows: list[dict]) -> list[str]:
    return [f"{row['heading']} {row['body']}".strip() for row in rows]


def write_corpus(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["doc_id", "heading", "body"],
                                    delimiter="," if suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(row["body"] for row in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    folder = tmp_path_factory.mktemp("corpus") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded_model(model_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir)


def arguments(model_dir: Path, inputs: list[Path], output_dir: Path, *extra: str) -> list[str]:
    return [str(model_dir), *map(str, inputs), "--output-dir", str(output_dir), "--device", "cpu",
            "--prompt-name", PROMPT, *FIELDS, "--batch-size", "3", *extra]


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def subprocess_env(pin_threads: bool = True, **extra: str) -> dict:
    """The environment of a subprocess run: one torch thread (as the reference run), or, with
    ``pin_threads=False``, torch's default for this machine, as a user's shell gives it."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", FAIL_AFTER_SHARDS_ENV, *THREAD_VARIABLES)}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)
    if pin_threads:
        env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    return env


def start(model_dir: Path, inputs: list[Path], output_dir: Path, pin_threads: bool = True,
          **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "llm_embed.corpus",
               *arguments(model_dir, inputs, output_dir, "--shard-size", str(SHARD_SIZE), "--wait-timeout", "300")]
    return subprocess.Popen(command, env=subprocess_env(pin_threads, **env), cwd=output_dir.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture()
def one_thread():
    """In-process runs with one torch thread, as the subprocess runs they resume (run.json records it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def shard_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard-*.safetensors"))}


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir) -> tuple[Path, Path]:
    """One uninterrupted single-process run (a subprocess, one thread): ``(corpus, output_dir)``."""
    root = tmp_path_factory.mktemp("reference")
    corpus = write_corpus(root / "corpus.jsonl", corpus_rows())
    code, stdout, stderr = finish(start(model_dir, [corpus], root / "out"))
    assert code == 0, stderr[-3000:]
    assert "23 documents" in stdout and "6 shards written, 0 already there" in stdout, stdout
    return corpus, root / "out"


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_shards_equal_encode_in_file_order(suffix, model_dir, loaded_model, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = corpus_rows()
    # two files, read one after the other; the shard boundary (5) falls inside the first file
    inputs = [write_corpus(tmp_path / f"a{suffix}", rows[:13]), write_corpus(tmp_path / f"b{suffix}", rows[13:])]
    result = main(arguments(model_dir, inputs, tmp_path / "out", "--shard-size", "5", "--progress"))
    assert (result["rows"], result["shards"], result["embedded_rows"], result["written_shards"]) == (23, 5, 23, 5)
    assert result["tokens"] > 23

    ids, embeddings = load_shards(tmp_path / "out")
    assert ids == [row["doc_id"] for row in rows]
    assert embeddings.dtype == np.float32 and embeddings.shape == (23, loaded_model.config.embedding_dim)
    expected = loaded_model.encode(expected_texts(rows), prompt_name=PROMPT, convert_to_numpy=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)

    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["model"] == str(model_dir) and manifest["prompt_name"] == PROMPT
    assert (manifest["attention"], manifest["pooling"], manifest["dtype"]) == ("bidirectional", "mean", "float32")
    assert manifest["dimension"] == loaded_model.config.embedding_dim
    assert manifest["inputs"] == [str(path) for path in inputs] and manifest["shard_size"] == 5
    assert manifest["total_rows"] == 23 and [s["rows"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["batch_size"] == 3 and manifest["prompt"] == loaded_model.config.prompts[PROMPT]
    assert (manifest["device"], manifest["cpu_threads"]) == ("cpu", torch_threads())
    assert manifest["model_fingerprint"]["options"]["pooling"] == "mean"
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text()) == {
        key: value for key, value in manifest.items()
        if key not in ("attention", "pooling", "dimension", "normalized", "total_rows", "shards")}
    assert (tmp_path / "out" / RUN_FILE).is_file() and leftovers(tmp_path / "out") == []


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_a_finished_run_rerun_writes_nothing(model_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows(7))
    args = arguments(model_dir, [corpus], tmp_path / "out", "--shard-size", "3")
    main(args)
    before = shard_files(tmp_path / "out")
    result = main(args)
    assert (result["written_shards"], result["resumed_shards"], result["embedded_rows"]) == (0, 3, 0)
    assert shard_files(tmp_path / "out") == before


# ----------------------------------------------------------------------------- bad input


def test_missing_field_names_file_line_and_field(model_dir, tmp_path):
    rows = corpus_rows(5)
    del rows[2]["body"]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:3: missing field 'body' (--text-field)")):
        main(arguments(model_dir, [corpus], tmp_path / "out"))

    rows = corpus_rows(5)
    del rows[4]["doc_id"]
    corpus = write_corpus(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:5: missing field 'doc_id' (--id-field)")):
        main(arguments(model_dir, [corpus], tmp_path / "out2"))


def test_csv_without_the_column_names_the_header_line(model_dir, tmp_path):
    corpus = tmp_path / "c.csv"
    corpus.write_text("doc_id,heading,text\nd0,t,hello\n")
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:1: missing field 'body'")):
        main(arguments(model_dir, [corpus], tmp_path / "out"))
    # the run failed before its first shard and withdrew its run.json: the corrected command starts afresh
    assert not (tmp_path / "out" / RUN_FILE).exists() and not list((tmp_path / "out").glob("shard-*"))
    main(arguments(model_dir, [corpus], tmp_path / "out", "--text-field", "text"))
    assert len(load_shards(tmp_path / "out")[0]) == 1


def test_parquet_without_pyarrow_names_the_install(monkeypatch, tmp_path):
    from llm_embed.corpus import input_format

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        input_format(tmp_path / "corpus.parquet")


def test_unknown_extension_is_a_one_line_error_of_the_command(model_dir, tmp_path):
    """Through the installed script: exit 1, the reason on the last line, before the model loads."""
    corpus = write_corpus(tmp_path / "corpus.txt", corpus_rows(3))
    script = Path(sys.executable).parent / "llm-embed-encode"
    assert script.is_file(), f"{script} is missing; install the package with: pip install --no-deps -e ."
    result = subprocess.run([str(script), str(model_dir), str(corpus), "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llm-embed-encode: error: ") and "unknown input format '.txt'" in last, last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_empty_input_is_refused_naming_the_file(model_dir, tmp_path):
    """An empty corpus is a mistake (a wrong path, a failed export): refused before the model loads,
    as llm-embed-train and llm-embed-evaluate refuse theirs."""
    empty = {"empty.jsonl": "", "blank.jsonl": "\n  \n", "header.csv": "doc_id,heading,body\n",
             "header.tsv": "doc_id\theading\tbody\n"}
    for name, content in empty.items():
        corpus = tmp_path / name
        corpus.write_text(content)
        what = "a header but no row" if name.startswith("header") else "no row"
        with pytest.raises(ValueError, match=re.escape(f"{corpus}: holds {what}: an empty corpus")):
            main(arguments(model_dir, [write_corpus(tmp_path / "ok.jsonl", corpus_rows(2)), corpus],
                           tmp_path / "out"))
    if importlib.util.find_spec("pyarrow") is not None:
        corpus = write_corpus(tmp_path / "empty.parquet", corpus_rows(2))
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(corpus).slice(0, 0), corpus)
        with pytest.raises(ValueError, match=re.escape(f"{corpus}: holds no row")):
            main(arguments(model_dir, [corpus], tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_are_refused_naming_both_rows(model_dir, tmp_path):
    rows = corpus_rows(7)
    rows[5]["doc_id"] = "d3"
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:6: duplicate id 'd3', first at {corpus}:4; ")):
        main(arguments(model_dir, [corpus], tmp_path / "out", "--shard-size", "3"))
    # refused as the row is read: the shard before it is written, the one holding it is not
    assert sorted(shard_files(tmp_path / "out")) == [shard_name(0)]

    first = write_corpus(tmp_path / "a.csv", corpus_rows(4))
    second = write_corpus(tmp_path / "b.csv", corpus_rows(2))  # d0, d1 again
    with pytest.raises(ValueError, match=re.escape(f"{second}:2: duplicate id 'd0', first at {first}:2")):
        main(arguments(model_dir, [first, second], tmp_path / "out2"))
    with pytest.raises(ValueError, match=re.escape(f"{first}: given twice as an input (also as {first})")):
        main(arguments(model_dir, [first, second, first], tmp_path / "out3"))
    assert not (tmp_path / "out3").exists()


def test_invalid_device_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    """--device is checked before the model loads (the model path here does not even exist), and its
    error is the command's one line, not torch's traceback after a long load."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", corpus_rows(3))
    script = Path(sys.executable).parent / "llm-embed-encode"
    command = [str(script), str(tmp_path / "no-model"), str(corpus), "--output-dir", str(tmp_path / "out"),
               "--device", "foo"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llm-embed-encode: error: --device 'foo': not a device (") and "pass cpu, cuda" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device 'cuda': this machine has no cuda device available to torch"):
        main([str(tmp_path / "no-model"), str(corpus), "--output-dir", str(tmp_path / "out"), "--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device 'cuda:1': this machine has 1 cuda device\(s\), numbered from 0"):
        main([str(tmp_path / "no-model"), str(corpus), "--output-dir", str(tmp_path / "out"), "--device", "cuda:1"])


# ----------------------------------------------------------------------------- resume and several processes


def test_killed_run_resumes_to_the_same_bytes(model_dir, reference, tmp_path):
    corpus, reference_dir = reference
    out = tmp_path / "out"
    code, _, _ = finish(start(model_dir, [corpus], out, **{FAIL_AFTER_SHARDS_ENV: "2"}))
    assert code == 1
    assert sorted(shard_files(out)) == [shard_name(0), shard_name(1)]
    assert not (out / MANIFEST).exists()
    assert len(leftovers(out)) == 1 and leftovers(out)[0].startswith(f".{shard_name(2)}.")  # the half-written one

    code, stdout, stderr = finish(start(model_dir, [corpus], out))
    assert code == 0, stderr[-3000:]
    assert "4 shards written, 2 already there" in stdout, stdout
    assert shard_files(out) == shard_files(reference_dir)
    assert leftovers(out) == []
    manifest, expected = (json.loads((folder / MANIFEST).read_text()) for folder in (out, reference_dir))
    assert manifest == expected


def test_two_processes_write_what_one_does(model_dir, reference, tmp_path):
    corpus, reference_dir = reference
    out = tmp_path / "out"
    processes = [start(model_dir, [corpus], out, RANK=str(rank), WORLD_SIZE="2") for rank in (0, 1)]
    results = [finish(process) for process in processes]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    assert "rank 0/2: " in results[0][1] and "rank 1/2: " in results[1][1]
    assert "3 shards written" in results[0][1] and "3 shards written" in results[1][1]
    assert shard_files(out) == shard_files(reference_dir)
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference_dir / MANIFEST).read_text())
    ids, embeddings = load_shards(out)
    expected_ids, expected_embeddings = load_shards(reference_dir)
    assert ids == expected_ids
    np.testing.assert_array_equal(embeddings, expected_embeddings)
    assert leftovers(out) == []


def test_torchrun_two_processes_write_what_one_does(model_dir, reference, tmp_path):
    """The launch users type, in the environment they type it in (threads not pinned): torchrun sets
    RANK / WORLD_SIZE / LOCAL_RANK and OMP_NUM_THREADS=1 for each process, so the bytes equal those of
    one process with one thread (the reference), and run.json records that thread count."""
    corpus, reference_dir = reference
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "llm_embed.corpus",
               *arguments(model_dir, [corpus], out, "--shard-size", str(SHARD_SIZE), "--wait-timeout", "300")]
    result = subprocess.run(command, env=subprocess_env(pin_threads=False), cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2: " in result.stdout and "rank 1/2: " in result.stdout
    assert json.loads((out / RUN_FILE).read_text())["cpu_threads"] == 1
    assert shard_files(out) == shard_files(reference_dir)
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference_dir / MANIFEST).read_text())
    assert leftovers(out) == []


def test_manifest_checksums_and_corruption(reference, tmp_path):
    _, reference_dir = reference
    manifest = json.loads((reference_dir / MANIFEST).read_text())
    assert [s["file"] for s in manifest["shards"]] == [shard_name(k) for k in range(6)]
    for record in manifest["shards"]:
        assert hashlib.sha256((reference_dir / record["file"]).read_bytes()).hexdigest() == record["sha256"]

    copy = shutil.copytree(reference_dir, tmp_path / "copy")
    shard = copy / shard_name(3)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor's data
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{shard}: sha256")):
        load_shards(copy)


def test_resume_with_other_arguments_is_refused(model_dir, reference, tmp_path, one_thread):
    corpus, reference_dir = reference
    copy = shutil.copytree(reference_dir, tmp_path / "copy")
    before = shard_files(copy)
    same = ["--shard-size", str(SHARD_SIZE)]
    with pytest.raises(ValueError, match=r"\(run\.json: prompt_name: 'query' there, 'document' now; "
                                         r"prompt: 'Instruct: .*' there, '' now\).*another --output-dir"):
        main(arguments(model_dir, [corpus], copy, *same, "--prompt-name", "document"))
    with pytest.raises(ValueError, match=r"\(run\.json: shard_size: 4 there, 5 now\)"):
        main(arguments(model_dir, [corpus], copy, "--shard-size", "5"))
    # the batch size changes the vectors' last bits: a resume must not mix two
    with pytest.raises(ValueError, match=r"\(run\.json: batch_size: 3 there, 4 now\) \(the batch size "):
        main(arguments(model_dir, [corpus], copy, *same, "--batch-size", "4"))
    (copy / MANIFEST).unlink()  # an unfinished run: run.json alone decides
    with pytest.raises(ValueError, match=r"\(run\.json: text_field: 'body' there, 'heading' now\)"):
        main(arguments(model_dir, [corpus], copy, *same, "--text-field", "heading"))
    run = json.loads((copy / RUN_FILE).read_text())
    del run["model_fingerprint"]  # as an earlier version wrote it: the model cannot be checked
    (copy / RUN_FILE).write_text(json.dumps(run))
    with pytest.raises(ValueError, match=r"model_fingerprint: not recorded there \(written by an earlier"):
        main(arguments(model_dir, [corpus], copy, *same))
    assert shard_files(copy) == before


def test_resume_with_another_model_at_the_same_path_is_refused(model_dir, tokenizer, tmp_path):
    """The audit's case: a run stopped, the model folder replaced (another design, or the same design
    retrained: same shapes), the same command run again. run.json's model fingerprint refuses both,
    naming what changed, and no shard is touched."""
    folder = shutil.copytree(model_dir, tmp_path / "model")
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows(7))
    args = arguments(folder, [corpus], tmp_path / "out", "--shard-size", "3")
    main(args)
    (tmp_path / "out" / MANIFEST).unlink()
    (tmp_path / "out" / shard_name(2)).unlink()  # as a killed run leaves it
    before = shard_files(tmp_path / "out")

    def replace_model(**kwargs) -> None:
        model = tiny_model("llama", "bidirectional", **kwargs)
        model.tokenizer = tokenizer
        shutil.rmtree(folder)
        model.save_pretrained(folder)

    replace_model(pooling="multi_layer")
    with pytest.raises(ValueError, match=r"model_fingerprint\.options\.pooling: 'mean' there, 'multi_layer' now;"
                                         r".*model_fingerprint\.weights_sha256: .*another model saved at the same "
                                         r"path, or retrained\?.*another --output-dir \(or delete this one\)"):
        main(args)
    replace_model(pooling="mean", seed=1)  # the same design and shapes, other weights
    with pytest.raises(ValueError, match=r"\(run\.json: model_fingerprint\.weights_sha256: '[0-9a-f]{64}' there, "
                                         r"'[0-9a-f]{64}' now\)"):
        main(args)
    assert shard_files(tmp_path / "out") == before


def test_weights_fingerprint_sees_retrained_weights_cheaply(loaded_model, model_dir):
    """The same weights loaded again give the same fingerprint; a small update of a large (sampled)
    tensor, one element of a small (whole) one, or another dtype give another."""
    import copy

    import torch
    from transformers import AutoModel

    from llm_embed.corpus import WEIGHT_SAMPLE, model_fingerprint, weights_fingerprint

    reference_print = model_fingerprint(loaded_model)
    assert model_fingerprint(AutoModel.from_pretrained(model_dir)) == reference_print
    tensors = dict(loaded_model.named_parameters())
    large = next(name for name, tensor in tensors.items() if tensor.numel() > WEIGHT_SAMPLE)
    small = next(name for name, tensor in tensors.items() if tensor.numel() < WEIGHT_SAMPLE)
    for name, change in ((large, lambda t: t.add_(1e-4 * torch.randn_like(t))), (small, lambda t: t[0].add_(1e-3))):
        other = copy.deepcopy(loaded_model)
        with torch.no_grad():
            change(dict(other.named_parameters())[name])
        assert weights_fingerprint(other) != reference_print["weights_sha256"], name
    half = copy.deepcopy(loaded_model).to(torch.bfloat16)  # numpy has no bfloat16: hashed as bytes
    assert weights_fingerprint(half) != reference_print["weights_sha256"]


def test_resume_with_another_thread_count_is_refused(model_dir, reference, tmp_path):
    """Run as users run it (threads not pinned: torch takes every core), killed, and resumed with one
    thread: the CPU's float reductions depend on the thread count, so the resume is refused, naming the
    count and OMP_NUM_THREADS; run.json records the count."""
    corpus, _ = reference
    out = tmp_path / "out"
    code, _, stderr = finish(start(model_dir, [corpus], out, pin_threads=False, **{FAIL_AFTER_SHARDS_ENV: "2"}))
    assert code == 1, stderr[-3000:]
    threads = json.loads((out / RUN_FILE).read_text())["cpu_threads"]
    if threads == 1:
        pytest.skip("torch uses one thread here unpinned (one core?): no other count to resume with")
    code, _, stderr = finish(start(model_dir, [corpus], out))  # OMP_NUM_THREADS=1
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert f"cpu_threads: {threads} there, 1 now" in last and "set OMP_NUM_THREADS to the recorded count" in last, last
    assert "Traceback" not in stderr
    assert sorted(shard_files(out)) == [shard_name(0), shard_name(1)]


def test_shards_of_a_changed_input_are_embedded_again(model_dir, reference, tmp_path, one_thread, capsys):
    """An id renamed since the shards were written: the shard holding it is embedded again (its recorded
    input hash differs), the others kept; rows past the corpus's end are refused."""
    corpus, reference_dir = reference
    copy = shutil.copytree(reference_dir, tmp_path / "copy")
    rows = corpus_rows()
    rows[1]["doc_id"] = "renamed"
    write_corpus(tmp_path / "corpus.jsonl", rows)
    # same arguments (the same input path), other content
    run = json.loads((copy / RUN_FILE).read_text())
    run["inputs"] = [str(tmp_path / "corpus.jsonl")]
    (copy / RUN_FILE).write_text(json.dumps(run))
    (copy / MANIFEST).unlink()
    result = main(arguments(model_dir, [tmp_path / "corpus.jsonl"], copy, "--shard-size", str(SHARD_SIZE)))
    assert (result["written_shards"], result["replaced_shards"], result["resumed_shards"]) == (1, 1, 5)
    assert f"{copy / shard_name(0)}: its input (prompt, ids or texts) changed" in capsys.readouterr().err
    assert load_shards(copy)[0][1] == "renamed"
    write_corpus(tmp_path / "corpus.jsonl", rows[:15])  # shorter: shards 4 and 5 are past its end
    with pytest.raises(ValueError, match=r"shard files past the corpus's 4 shards \(shard-00004.safetensors, "
                                         r"shard-00005.safetensors\): the input has fewer rows"):
        main(arguments(model_dir, [tmp_path / "corpus.jsonl"], copy, "--shard-size", str(SHARD_SIZE)))


@pytest.mark.skipif(not (SHARED_DATA / "scifact" / "corpus.jsonl").is_file(), reason="needs ../shared/data")
def test_search_example_finds_documents_from_the_shards(model_dir, tmp_path, capsys):
    """examples/search_scifact.py: a SciFact subset embedded into shards, queries ranked against them; a
    rerun reuses the shards, and the exact and the shard-read rankings agree with encode's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_scifact", ROOT / "examples" / "search_scifact.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--model", str(model_dir), "--data-dir", str(SHARED_DATA), "--output-dir", str(tmp_path / "index"),
            "--max-docs", "12", "--queries", "3", "--top-k", "5", "--shard-size", "7"]
    result = example.main(argv)
    queries, relevant = example.labelled_queries(SHARED_DATA / "scifact", 3)
    needed = set().union(*relevant.values())
    assert result["queries"] == 3 and result["documents"] == 12 + len(needed - {
        row["_id"] for row in example.read_jsonl(SHARED_DATA / "scifact" / "corpus.jsonl")[:12]})
    assert 0 <= result["hits_at_k"] <= 1
    out = capsys.readouterr().out
    assert "queries have a relevant document in their top 5" in out
    shards = shard_files(tmp_path / "index")
    if importlib.util.find_spec("faiss") is None:  # refused before the corpus is embedded (it was after)
        with pytest.raises(SystemExit, match="--faiss needs the faiss-cpu package"):
            example.main([*argv, "--output-dir", str(tmp_path / "faiss"), "--faiss"])  # the last --output-dir
        assert not (tmp_path / "faiss").exists()
    assert example.main(argv) == result  # reruns reuse the shards
    assert shard_files(tmp_path / "index") == shards
    # the ranking is the exact one: top_k agrees with a full sort
    scores = np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32)
    best = example.top_k(scores, np.eye(30, dtype=np.float32), 5, use_faiss=False)
    np.testing.assert_array_equal(best, np.argsort(-scores, axis=1)[:, :5])


def test_encode_corpus_takes_one_path_and_any_integer_counts(loaded_model, tmp_path):
    """A single ``str`` / ``Path`` was iterated as characters or refused, and a numpy ``batch_size``
    (from a config or a sweep) was refused as "not a positive integer"."""
    from llm_embed.corpus import encode_corpus

    path = write_corpus(tmp_path / "c.jsonl", corpus_rows(5))
    for single in (str(path), path):
        summary = encode_corpus(loaded_model, single, tmp_path / type(single).__name__, text_field="body",
                                id_field="doc_id", batch_size=np.int64(2), shard_size=np.int32(4))
        assert summary["rows"] == 5 and summary["shards"] == 2
    with pytest.raises(TypeError, match=r"encode_corpus\(\): batch_size must be an integer, got 2.5"):
        encode_corpus(loaded_model, path, tmp_path / "x", text_field="body", id_field="doc_id", batch_size=2.5)
    with pytest.raises(ValueError, match=r"encode_corpus\(\): shard_size must be a positive integer, got 0"):
        encode_corpus(loaded_model, path, tmp_path / "x", text_field="body", id_field="doc_id", shard_size=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_an_input_that_is_not_utf8_is_named_with_the_fix(model_dir, tmp_path, suffix):
    """A Latin-1 file gave a bare UnicodeDecodeError naming neither the file nor what to do."""
    rows = corpus_rows(3)
    rows[2]["body"] = "caf\u00e9 cr\u00e8me"
    path = write_corpus(tmp_path / f"latin1{suffix}", rows)
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":  # json.dumps wrote \u00e9 escapes: plain ASCII; write the characters themselves
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"latin1{re.escape(suffix)}(:\d+)?: .*not UTF-8 .*iconv -f latin1 -t utf-8"):
        main(arguments(model_dir, [path], tmp_path / "out"))


# ----------------------------------------------------------------------------- audit 5 regressions


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_re_embedded_not_laundered(model_dir, reference, tmp_path, one_thread, capsys):
    """The audit's case: a shard corrupted after a finished run (load_shards refuses it); the documented
    resume, the same command again, kept it and wrote a manifest with its new sha256, so load_shards then
    accepted it. Now the rerun re-embeds the damaged shards (one in its embeddings, one in its ids, one cut
    short), and the folder equals the uncorrupted run again."""
    corpus, reference_dir = reference
    copy = shutil.copytree(reference_dir, tmp_path / "copy")
    header = int.from_bytes((copy / shard_name(3)).read_bytes()[:8], "little") + 8
    flip_byte(copy / shard_name(3), header + 3)  # inside 'embeddings'
    flip_byte(copy / shard_name(1), -3)  # inside 'ids' (the last tensor)
    (copy / shard_name(5)).write_bytes((copy / shard_name(5)).read_bytes()[:100])  # cut short: unreadable
    with pytest.raises(ValueError, match=re.escape(f"{copy / shard_name(1)}: sha256")):
        load_shards(copy)
    result = main(arguments(model_dir, [corpus], copy, "--shard-size", str(SHARD_SIZE)))
    assert (result["written_shards"], result["resumed_shards"], result["replaced_shards"]) == (3, 3, 3)
    assert capsys.readouterr().err.count("; embedding it again") == 3
    assert shard_files(copy) == shard_files(reference_dir)
    assert json.loads((copy / MANIFEST).read_text()) == json.loads((reference_dir / MANIFEST).read_text())
    load_shards(copy)


def test_a_rank_with_other_arguments_is_refused_while_another_rank_holds_the_record(model_dir, reference,
                                                                                 tmp_path, one_thread, monkeypatch):
    """Two ranks of one folder started with different arguments: the later one found the other's run.json
    but no shard yet, took it for a run that failed before its first shard, and overwrote it (both exited 0,
    shards mixed). A record now stays until the run that wrote it withdraws it on its own failure, so a
    rank that is still running (here: killed in its first shard, which the folder cannot tell apart) keeps
    its record and the other arguments are refused."""
    corpus, _ = reference
    out = tmp_path / "out"
    code, _, stderr = finish(start(model_dir, [corpus], out, RANK="1", WORLD_SIZE="2", **{FAIL_AFTER_SHARDS_ENV: "0"}))
    assert code == 1 and (out / RUN_FILE).is_file() and not list(out.glob("shard-*")), stderr[-3000:]
    record = (out / RUN_FILE).read_bytes()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"\(run\.json: prompt_name: 'query' there, 'document' now;"):
        main(arguments(model_dir, [corpus], out, "--shard-size", str(SHARD_SIZE), "--prompt-name", "document",
                       "--wait-timeout", "1"))
    assert (out / RUN_FILE).read_bytes() == record and not list(out.glob("shard-*"))


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_rows_with_more_fields_than_the_header_are_refused(tmp_path, suffix):
    """An unquoted comma (CSV) or a tab (TSV) in a field split it, and the values past the header's columns
    were dropped: the text embedded was cut short without a word."""
    from llm_embed.corpus import read_documents

    corpus = tmp_path / f"c{suffix}"
    if suffix == ".csv":
        corpus.write_text('doc_id,heading,body\nd0,t,"hello, world"\nd1,t,hello, world\n')
        fix = "quote a field that holds a comma"
    else:
        corpus.write_text("doc_id\theading\tbody\nd0\tt\thello\nd1\tt\thello\tworld\n")
        fix = "a TSV field holds no tab"
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:3: 4 fields, the header has 3") + f".*{fix}"):
        list(read_documents([corpus], "body", "heading", "doc_id"))


def test_a_text_edited_since_its_shard_was_written_is_re_embedded(model_dir, loaded_model, reference, tmp_path,
                                                                 one_thread):
    """A text changed under the same id, then the same command rerun: the old vector was kept. Each shard
    records a hash of its input (prompt, ids, texts), so the resume re-embeds that shard alone."""
    corpus, reference_dir = reference
    copy = shutil.copytree(reference_dir, tmp_path / "copy")
    rows = corpus_rows()
    rows[5]["body"] = "a completely different text now"
    edited = write_corpus(tmp_path / "corpus.jsonl", rows)
    for name in (RUN_FILE, MANIFEST):  # the same arguments, the input at another path
        record = json.loads((copy / name).read_text())
        record["inputs"] = [str(edited)]
        (copy / name).write_text(json.dumps(record))
    result = main(arguments(model_dir, [edited], copy, "--shard-size", str(SHARD_SIZE)))
    assert (result["written_shards"], result["resumed_shards"]) == (1, 5)
    ids, embeddings = load_shards(copy)
    expected = loaded_model.encode(expected_texts(rows), prompt_name=PROMPT, convert_to_numpy=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)
    unchanged = {name: data for name, data in shard_files(reference_dir).items() if name != shard_name(1)}
    assert {name: data for name, data in shard_files(copy).items() if name != shard_name(1)} == unchanged


def test_a_jsonl_file_with_only_a_byte_order_mark_is_empty(tmp_path):
    from llm_embed.corpus import check_inputs

    corpus = tmp_path / "bom.jsonl"
    corpus.write_bytes(b"\xef\xbb\xbf\n")
    with pytest.raises(ValueError, match=re.escape(f"{corpus}: holds no row: an empty corpus")):
        check_inputs([corpus])


def test_an_id_with_a_lone_surrogate_is_refused_as_it_is_read(tmp_path):
    """It failed with a bare codec error naming nothing, after a whole shard was embedded."""
    from llm_embed.corpus import read_documents

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"doc_id": "ok", "body": "x"}\n{"doc_id": "a\\ud800", "body": "x"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{corpus}:2: field 'doc_id' (--id-field) holds a lone "
                                                   "surrogate '\\ud800'")):
        list(read_documents([corpus], "body", None, "doc_id"))


def test_the_model_path_is_recorded_the_same_way_by_the_command_and_the_function(model_dir, loaded_model,
                                                                                  tmp_path, monkeypatch):
    """The command recorded a local model's absolute path, encode_corpus the path as given, so neither
    resumed the other's folder. Both record the absolute path of a local folder, a Hub id as given."""
    from llm_embed.corpus import encode_corpus

    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows(2))
    monkeypatch.chdir(model_dir.parent)
    encode_corpus(loaded_model, corpus, tmp_path / "out", text_field="body", id_field="doc_id",
                  model_path=model_dir.name)
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text())["model"] == str(model_dir)
    encode_corpus(loaded_model, corpus, tmp_path / "hub", text_field="body", id_field="doc_id",
                  model_path="someone/some-model")
    assert json.loads((tmp_path / "hub" / RUN_FILE).read_text())["model"] == "someone/some-model"


def test_an_output_dir_that_is_a_file_is_named_with_the_fix(loaded_model, tmp_path):
    from llm_embed.corpus import encode_corpus

    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows(2))
    (tmp_path / "afile").write_text("x")
    for output_dir in (tmp_path / "afile", tmp_path / "afile" / "out"):
        with pytest.raises(ValueError, match=re.escape(f"output folder {output_dir} (--output-dir): "
                                                       f"{tmp_path / 'afile'} is a file")):
            encode_corpus(loaded_model, corpus, output_dir, text_field="body", id_field="doc_id")


@pytest.mark.parametrize(("content", "problem"), [
    # an unclosed quote read every following line into one field: 4 rows became 1 document, exit status 0
    ('doc_id,body\n1,"first doc\n2,second doc\n3,third doc\n4,fourth doc\n', r"c\.csv:5: not valid CSV"),
    # a quote inside an unquoted field was dropped: '5 screen" laptop' embedded
    ('doc_id,body\n1,"5" screen" laptop\n', r"c\.csv:2: not valid CSV"),
    # a repeated column: the last one was read, the other dropped
    ("doc_id,body,body\n1,one,two\n", r"c\.csv:1: the header names column 'body' more than once"),
    # a short row: its missing text was taken for a JSON null ("it is null in this row (its fields: doc_id, body)")
    ("doc_id,body\n1,one\n2\n", r"c\.csv:3: 1 field, the header has 2: the row is short"),
])
def test_malformed_csv_is_refused_by_line_never_read_another_way(tmp_path, content, problem):
    from llm_embed.corpus import check_inputs, read_documents

    corpus = tmp_path / "c.csv"
    corpus.write_text(content)
    with pytest.raises(ValueError, match=problem):
        check_inputs([corpus])  # the command's check before the model loads reads the first rows
        list(read_documents([corpus], "body", None, "doc_id"))


def test_a_tsv_keeps_its_quotes_as_characters(tmp_path):
    from llm_embed.corpus import read_documents

    corpus = tmp_path / "c.tsv"
    corpus.write_text('doc_id\tbody\n1\t"5" screen" laptop\n2\t"open\n')
    assert [(d.id, d.text) for d in read_documents([corpus], "body", None, "doc_id")] == [
        ("1", '"5" screen" laptop'), ("2", '"open')]


def test_the_command_refuses_an_output_dir_under_a_file_before_the_model_loads(tmp_path, capsys):
    """The docs said so; the check ran in encode_corpus, after the model (minutes for a 7B one) had loaded."""
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows(2))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"\(--output-dir\): .*afile is a file"):
        main(arguments(tmp_path / "no-model-here", [corpus], tmp_path / "afile" / "out"))


def test_an_encode_error_names_the_row_it_counts_from(loaded_model, tmp_path):
    """``text 3`` from encode counts from 0; the message said "the i-th of them", sending the reader one row
    too early."""
    from llm_embed.corpus import encode_corpus

    rows = [{"doc_id": f"d{i}", "body": "" if i == 3 else f"text {i}"} for i in range(5)]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    original = loaded_model.config.append_eos
    loaded_model.config.append_eos = False
    try:
        with pytest.raises(ValueError, match=re.escape(f"(text i below counts from 0: text 0 is {corpus}:1): "
                                                       "encode(): text 3 '' produced no tokens")):
            encode_corpus(loaded_model, corpus, tmp_path / "out", text_field="body", id_field="doc_id")
    finally:
        loaded_model.config.append_eos = original
