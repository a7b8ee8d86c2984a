"""The installed console commands exit 0 on success and non-zero with a one-line reason on an error.

They run as subprocesses through the scripts pip wrote next to the interpreter, since the bug was in
how the wrapper treats ``main``'s return value: calling ``main`` in-process cannot catch it. Each
uses its cheapest invocation (a tiny backbone, one step, a few data rows)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_embed.cli import run_console

from .conftest import tiny_model, triplet_rows

BIN = Path(sys.executable).parent


def run_script(name: str, *args, cwd) -> subprocess.CompletedProcess:
    script = BIN / name
    assert script.is_file(), f"{script} is missing; install the package with: pip install --no-deps -e ."
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def assert_one_line_failure(result: subprocess.CompletedProcess, prog: str, reason: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and reason in last, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def write_rows(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# ----------------------------------------------------------------------------- llm-embed-train


def test_train_command_exits_zero_and_saves(tiny_backbone_dir, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", triplet_rows(4))
    result = run_script("llm-embed-train", "--backbone", tiny_backbone_dir, "--train_file", data,
                        "--output_dir", tmp_path / "out", "--max_steps", "1", "--per_device_train_batch_size", "2",
                        "--max_seq_length", "32", "--pooling", "mean", "--save_strategy", "no", "--report_to", "none",
                        "--use_cpu", "--disable_tqdm", "true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").is_file()
    assert "error" not in result.stderr.strip().splitlines()[-1]


def test_train_command_missing_file_is_one_line_error(tmp_path):
    result = run_script("llm-embed-train", "--train_file", tmp_path / "missing.jsonl",
                        "--output_dir", tmp_path / "out", "--report_to", "none", cwd=tmp_path)
    assert_one_line_failure(result, "llm-embed-train", "missing.jsonl does not exist; pass a JSONL file")
    assert not (tmp_path / "out").exists()


def test_train_command_bad_data_fails_before_training(tmp_path):
    """Mixed hard-negative counts fail at once (before the backbone loads), naming file:line."""
    data = write_rows(tmp_path / "rows.jsonl", triplet_rows(3, negatives=1) + triplet_rows(1, negatives=0))
    result = run_script("llm-embed-train", "--train_file", data, "--output_dir", tmp_path / "out",
                        "--report_to", "none", cwd=tmp_path)
    assert_one_line_failure(result, "llm-embed-train", f"0 (first at {data}:4), 1 (first at {data}:1)")


# ----------------------------------------------------------------------------- llm-embed-evaluate


def write_stsb(data_dir: Path) -> None:
    """A tiny STS-B test file in the shared data's layout (genre, file, year, id, score, s1, s2)."""
    pairs = [("a cat sits", "a cat is sitting", 4.8), ("a man plays", "the stock fell", 0.2),
             ("rain in spain", "it rains in spain", 4.1), ("a red car", "a blue song", 1.0)]
    (data_dir / "stsb").mkdir(parents=True)
    (data_dir / "stsb" / "sts-test.csv").write_text(
        "".join(f"main\tfile\t2012\t{i}\t{score}\t{a}\t{b}\n" for i, (a, b, score) in enumerate(pairs)))


def test_evaluate_command_exits_zero_and_writes_results(tokenizer, tmp_path):
    pytest.importorskip("scipy", reason="STS scoring needs scipy (the evaluation extra; not in the floor venv)")
    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    write_stsb(tmp_path / "data")
    result = run_script("llm-embed-evaluate", tmp_path / "model", "--data-dir", tmp_path / "data", "--tasks", "stsb",
                        "--output", tmp_path / "r.json", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| STS-B | sts | spearman |" in result.stdout
    assert [r["task"] for r in json.loads((tmp_path / "r.json").read_text())["results"]] == ["STS-B"]


def test_evaluate_command_missing_task_file_is_one_line_error(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_script("llm-embed-evaluate", tmp_path / "no-model", "--data-dir", tmp_path / "data",
                        "--tasks", "stsb", cwd=tmp_path)
    assert_one_line_failure(result, "llm-embed-evaluate", "sts-test.csv")


def test_evaluate_model_after_task_is_named(capsys):
    """The model written after --task's words was taken as one of them: argparse said only "the following
    arguments are required: model" (before)."""
    from llm_embed.evaluation import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "sts:pairs.csv", "score=label", "out/model"])
    assert exit_info.value.code == 2
    assert "the model 'out/model' was read as a word of --task: put the model before --task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tasks", "stsb"])
    assert "the following arguments are required: model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["llm-embed-evaluate", "llm-embed-encode"])
def test_a_plain_decoder_folder_is_a_one_line_error_naming_from_backbone(tiny_backbone_dir, tmp_path, command):
    """The commands loaded through AutoModel, which returned the plain decoder: the run then failed on
    "'LlamaConfig' object has no attribute 'prompts'" with a traceback."""
    if command == "llm-embed-evaluate":
        write_stsb(tmp_path / "data")
        args = ["--data-dir", tmp_path / "data", "--tasks", "stsb", "--no-progress"]
    else:
        args = [write_rows(tmp_path / "corpus.jsonl", [{"_id": "1", "text": "a"}]), "--output-dir", tmp_path / "out"]
    result = run_script(command, tiny_backbone_dir, *args, cwd=tmp_path)
    assert_one_line_failure(result, command, "holds a plain llama model")
    assert "LLMEmbeddingModel.from_backbone" in result.stderr


# ----------------------------------------------------------------------------- llm-embed-study


def write_study_run(output_dir: Path) -> None:
    """One finished run in ``runs/``, as the study writes it: what --report-only rebuilds from."""
    gold = [4.8, 0.2, 4.1, 1.0]
    result = dict(task="STS-B", category="sts", main_metric="spearman", main_score=80.0, scores={"spearman": 80.0},
                  per_item={"cosine": [0.9, 0.1, 0.8, 0.3], "gold": gold})
    run = dict(design=1, attention="causal", pooling="last_token", seed=0, embed_seconds=0.1, train_seconds=1.0,
               losses=[1.0, 0.5], score_wall_seconds=0.1, results=[result])
    (output_dir / "runs").mkdir(parents=True)
    (output_dir / "runs" / "design1_seed0.json").write_text(json.dumps(run))


def test_study_report_only_exits_zero(tmp_path):
    write_study_run(tmp_path / "study")
    result = run_script("llm-embed-study", "--report-only", "--no-plot", "--output-dir", tmp_path / "study",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1: causal + last_token" in (tmp_path / "study" / "results.md").read_text()


def test_study_report_only_without_runs_is_one_line_error(tmp_path):
    result = run_script("llm-embed-study", "--report-only", "--no-plot", "--output-dir", tmp_path / "empty",
                        cwd=tmp_path)
    assert_one_line_failure(result, "llm-embed-study", "no runs in")


# ----------------------------------------------------------------------------- run_console


def test_run_console_statuses(capsys, monkeypatch):
    """User errors: one line; anything else (a bug): traceback, then the line; argparse's exits pass
    through; Ctrl-C is 130."""
    monkeypatch.delenv("LLM_EMBED_TRACEBACK", raising=False)

    def raising(error):
        def main():
            raise error
        return main

    assert run_console(lambda: {"a": "result"}, "prog") == 0
    assert capsys.readouterr().err == ""

    assert run_console(raising(ValueError("bad value\nsecond line; fix it")), "prog") == 1
    assert capsys.readouterr().err == "prog: error: bad value second line; fix it\n"

    assert run_console(raising(RuntimeError("boom")), "prog") == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.strip().splitlines()[-1] == "prog: error: RuntimeError: boom"

    monkeypatch.setenv("LLM_EMBED_TRACEBACK", "1")
    assert run_console(raising(ValueError("bad value")), "prog") == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.strip().splitlines()[-1] == "prog: error: ValueError: bad value"

    with pytest.raises(SystemExit) as exited:
        run_console(raising(SystemExit(2)), "prog")
    assert exited.value.code == 2
    assert run_console(raising(KeyboardInterrupt()), "prog") == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


def test_the_error_is_the_last_line_after_an_open_progress_bar(capsys, monkeypatch):
    """A tqdm bar left open by the exception (the Trainer's) used to redraw itself after the error
    line when it was closed or collected."""
    import gc

    from tqdm.auto import tqdm

    monkeypatch.delenv("LLM_EMBED_TRACEBACK", raising=False)

    def main():
        bar = tqdm(total=3)
        bar.update(1)
        raise ValueError("bad batch")

    assert run_console(main, "prog") == 1
    gc.collect()  # an unclosed bar would write now
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "prog: error: bad batch", err


# ----------------------------------------------------------------------------- arguments refused before the work


def test_evaluate_refuses_an_output_folder_before_loading_the_model(tmp_path, capsys):
    from llm_embed.evaluation import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no-model"), "--task", "sts:pairs.csv", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--output {tmp_path} is a folder; pass a file name" in capsys.readouterr().err


@pytest.mark.parametrize("limit", [["0"], ["banking77_train=0"], ["scifact=0"], ["20", "stsb=0"], ["0", "stsb=5"]])
def test_evaluate_refuses_a_limit_of_zero_as_usage(tmp_path, capsys, limit):
    from llm_embed.evaluation import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no-model"), "--data-dir", str(tmp_path), "--limit", *limit])
    assert exit_info.value.code == 2
    assert "a limit must be at least 1 item" in capsys.readouterr().err


def test_evaluate_refuses_backbone_for_a_model_that_is_not_an_adapter(tmp_path, capsys):
    from llm_embed.evaluation import main
    from llm_embed.evaluation.runner import load_model

    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "model"), "--task", "sts:pairs.csv", "--backbone", "/does/not/exist"])
    assert exit_info.value.code == 2
    assert "--backbone is only for a LoRA artifact" in capsys.readouterr().err
    with pytest.raises(ValueError, match="backbone='/x' is only for a LoRA artifact"):
        load_model(tmp_path / "model", backbone="/x")


def test_a_builtin_task_listed_twice_is_named_as_such(tmp_path, capsys):
    from llm_embed.evaluation import default_tasks, main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no-model"), "--data-dir", str(tmp_path), "--tasks", "stsb", "stsb"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--tasks lists stsb more than once; name each task once" in err and "name=" not in err
    with pytest.raises(ValueError, match="--tasks lists stsb more than once"):  # the study's path
        default_tasks(tmp_path, ["stsb", "sick", "stsb"])


def test_study_help_example_uses_the_study_options(capsys):
    from llm_embed.study import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "llm-embed-study --task sts:pairs.csv" in out and "--tasks stsb --task-limit 100" in out
    assert "put the model" not in out and "--limit 100" not in out and "; --limit applies" not in out


def test_an_empty_parquet_input_is_named(tmp_path):
    pytest.importorskip("pyarrow")
    from llm_embed.corpus import check_inputs

    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{tmp_path / 'x.parquet'} is not a readable Parquet file"):
        check_inputs([tmp_path / "x.parquet"])
