"""llm-embed-study's checks: options refused before anything is built, training data too small for
one batch, a finished run kept when a later design fails, --head-learning-rate on a design without
a head, --bf16 on a machine without CUDA."""

import json
import logging
from concurrent.futures import Future

import pytest
import torch

from .test_study import replace_option, small_study_argv, write_study_data

pytest.importorskip("scipy")
pytest.importorskip("sklearn")


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, message", [
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1, got 0"),
    (["--score-workers", "0"], "--score-workers must be >= 1, got 0"),
    (["--score-threads", "0"], "--score-threads must be >= 1, got 0"),
    (["--max-train-rows", "0"], "--max-train-rows must be >= 1, got 0"),
    (["--warmup-ratio", "-2"], "--warmup-ratio must be in [0, 1]"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1]"),
    (["--learning-rate", "0"], "--learning-rate must be a number > 0, got 0.0"),
    (["--learning-rate", "-1"], "--learning-rate must be a number > 0, got -1.0"),
    (["--head-learning-rate", "0"], "--head-learning-rate must be a number > 0, got 0.0"),
    (["--designs", "2", "2", "3"], "--designs names 2 more than once"),
    (["--seeds", "0", "1", "0", "1"], "--seeds names 0 1 more than once"),
    (["--no-lora", "--lora-r", "8", "--lora-alpha", "64"], "--lora-r --lora-alpha given with --no-lora"),
    (["--no-lora", "--lora-dropout", "0.1"], "--lora-dropout given with --no-lora"),  # the default, but given
    (["--lora-a", "8", "--no-lora"], "--lora-alpha given with --no-lora"),  # argparse's abbreviation
])
def test_study_refuses_bad_options_before_anything_is_built(argv, message, capsys):
    """Each of these was accepted: --eval-batch-size 0 failed after a whole design trained,
    --score-workers 0 with Python's bare "max_workers must be greater than 0", --max-train-rows 0 as
    "the files hold no rows", --warmup-ratio -2 trained with one warm-up step (recorded as -2), a
    repeated design or seed trained the same run twice (the report kept one), and LoRA sizes with
    --no-lora were ignored. Each is a usage error naming the option."""
    from llm_embed.study import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


def test_study_accepts_the_edges_of_the_ranges():
    from llm_embed.study import parse_args

    args = parse_args(["--warmup-ratio", "0", "--max-train-rows", "1", "--eval-batch-size", "1", "--score-workers",
                       "1", "--score-threads", "1", "--designs", "1", "2", "--seeds", "0", "1"])
    assert args.warmup_ratio == 0 and args.max_train_rows == 1
    assert parse_args(["--warmup-ratio", "1"]).warmup_ratio == 1
    assert not parse_args(["--no-lora"]).lora  # LoRA sizes left at their defaults are no refusal


def test_study_help_shows_each_default_and_none_for_flags():
    """``--help`` showed ``--no-lora ... (default: True)`` (the stored ``lora`` value: read as full
    fine-tuning by default) and no default at all for options without a help text."""
    import re

    from llm_embed.study import build_parser

    text = " ".join(build_parser().format_help().split())
    assert re.search(r"--no-lora full fine-tuning instead of LoRA \(the default trains LoRA adapters and the head\) "
                     r"--lora-r", text)
    parser = build_parser()
    shown = {action.dest: parser.formatter_class("llm-embed-study")._get_help_string(action) % vars(action)
             for action in parser._actions}
    for name, default in (("max_steps", "50"), ("output_dir", "study_out"), ("lora_r", "16"),
                          ("warmup_ratio", "0.1"), ("eval_batch_size", "64"), ("learning_rate", "0.0001")):
        assert shown[name].endswith(f"(default: {default})"), shown[name]
        assert shown[name] in text
    assert "(default: bundled SmolLM2-135M) (default: None)" not in text
    assert "(default: False)" not in text  # flags (--bf16, --no-plot, ...) have no default to show


# ----------------------------------------------------------------------------- too little training data


@pytest.fixture
def study_folder(tmp_path, monkeypatch):
    write_study_data(tmp_path)  # tri.jsonl: 8 triplets; pairs.csv: 12 STS pairs
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_study_refuses_fewer_training_rows_than_one_batch(study_folder, tiny_backbone_dir, monkeypatch):
    """With fewer rows than --batch-size the study's dataloader (drop_last) dropped every batch: no step
    ran, exit status 0, and an untrained model was reported as trained (losses [], "final loss nan").
    It is refused before any design trains, naming the rows, the batch size and the fix."""
    from llm_embed import study

    monkeypatch.setattr(study, "train_design", lambda *a, **k: pytest.fail("a design was trained"))
    argv = [*small_study_argv(tiny_backbone_dir), "--max-train-rows", "3"]
    with pytest.raises(ValueError) as refused:
        study.main(replace_option(argv, "--batch-size", "4"))
    message = str(refused.value)
    assert "the training data has 3 rows (--max-train-rows 3 of tri.jsonl)" in message
    assert "fewer than one batch of --batch-size 4" in message
    assert "give at least 4 rows (raise --max-train-rows), or lower --batch-size to 3 or fewer" in message
    with pytest.raises(ValueError, match=r"has 1 row \(--max-train-rows 1 of tri.jsonl\).* give at least 2 rows"):
        study.main([*argv, "--max-train-rows", "1"])
    assert not list((study_folder / "out" / "runs").glob("design*.json"))


def test_a_design_that_ran_no_optimizer_step_is_not_scored(study_folder, tiny_backbone_dir):
    """Defence in depth behind the check above: a run that ends without a single optimizer step is
    refused rather than scored as a trained design."""
    from llm_embed import study

    args = study.parse_args(small_study_argv(tiny_backbone_dir))
    one_row = study.read_triplets(["tri.jsonl"], 1)  # one row, batches of 2: every batch dropped
    with pytest.raises(ValueError, match=r"design 1 seed 0 ran no optimizer step \(1 training rows, --batch-size 2"):
        study.train_design(args, 1, 0, tiny_backbone_dir, one_row)


# ----------------------------------------------------------------------------- a failure keeps finished runs


def test_study_keeps_a_scored_run_when_a_later_design_fails(study_folder, tiny_backbone_dir, monkeypatch):
    """A design that failed threw away the previous design's finished run: its file was written only
    at the next collect, so with --designs 1 2 and design 2 failing, design 1 had trained, embedded
    and been submitted for scoring, but runs/ stayed empty. The study now waits for that scoring,
    writes the run, and raises the design's own error."""
    from llm_embed import study

    trained = study.train_design

    def train(args, design, *rest):
        if design == 2:
            raise RuntimeError("design 2 broke")
        return trained(args, design, *rest)

    monkeypatch.setattr(study, "train_design", train)
    with pytest.raises(RuntimeError, match="design 2 broke"):
        study.main([*small_study_argv(tiny_backbone_dir), "--designs", "1", "2"])
    run = json.loads((study_folder / "out" / "runs" / "design1_seed0.json").read_text())
    assert [r["task"] for r in run["results"]] == ["pairs"] and len(run["losses"]) == 1
    assert not (study_folder / "out" / "runs" / "design2_seed0.json").exists()
    # the kept run's device and software, which --report-only reports: written only on success before
    environment = json.loads((study_folder / "out" / "runs" / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["device"]


class StillScoring(Future):
    """A future whose scoring finishes only when someone waits for it (``done()`` is False until then),
    as a scoring process still at work when the study is stopped."""

    def __init__(self, result=None, error=None):
        super().__init__()
        self.outcome = result, error

    def finish(self):
        if not super().done():
            result, error = self.outcome
            self.set_exception(error) if error is not None else self.set_result(result)

    def result(self, timeout=None):
        self.finish()
        return super().result(timeout)

    def exception(self, timeout=None):
        self.finish()
        return super().exception(timeout)


def fake_pipeline(monkeypatch, study, stop: BaseException, scoring_error: Exception | None = None):
    """Design 1 "trains" at once and its scoring is still running when design 2 raises ``stop``."""

    class Executor:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, function, name, embeddings):
            return StillScoring({"task": name, "main_score": 1.0}, scoring_error)

        def shutdown(self, **kwargs):
            pass

    def train(args, design, *rest):
        if design == 2:
            raise stop
        return object(), {"train_seconds": 0.0, "losses": [1.0]}

    monkeypatch.setattr(study, "ProcessPoolExecutor", Executor)
    monkeypatch.setattr(study, "train_design", train)
    monkeypatch.setattr(study, "embed_tasks", lambda args, model, tasks: ({task.name: None for task in tasks}, 0.0))


def test_study_stopped_by_ctrl_c_keeps_the_run_being_scored(study_folder, monkeypatch):
    """Ctrl-C while a design trains: the previous design, still being scored, is waited for and kept,
    and the KeyboardInterrupt goes on (the study stops)."""
    from llm_embed import study

    fake_pipeline(monkeypatch, study, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        study.main([*small_study_argv("unused"), "--designs", "1", "2"])
    run = json.loads((study_folder / "out" / "runs" / "design1_seed0.json").read_text())
    assert run["results"] == [{"task": "pairs", "main_score": 1.0}] and "_scoring_started" not in run


def test_a_scoring_failure_while_stopping_does_not_hide_the_error(study_folder, monkeypatch, caplog):
    """The scoring waited for on the way out fails too: that is logged, and the user sees the error
    that stopped the study."""
    from llm_embed import study

    fake_pipeline(monkeypatch, study, RuntimeError("design 2 broke"), scoring_error=ValueError("scoring broke"))
    with caplog.at_level(logging.INFO, logger="llm_embed.study"), pytest.raises(RuntimeError, match="design 2 broke"):
        study.main([*small_study_argv("unused"), "--designs", "1", "2"])
    assert "design 1 seed 0 was trained but not kept" in caplog.text and "ValueError: scoring broke" in caplog.text
    assert not list((study_folder / "out" / "runs").glob("design*.json"))


# ----------------------------------------------------------------------------- --head-learning-rate


def test_head_learning_rate_applies_to_the_designs_with_a_head(study_folder, tiny_backbone_dir, monkeypatch,
                                                               caplog):
    """--head-learning-rate failed every default study: design 1 (last token) has no trainable
    parameter outside the backbone, so set_head_learning_rate refused it inside trainer.train(). It
    now applies to the designs with a head (design 2 here, under LoRA) and design 1 trains at
    --learning-rate, with one INFO line; the run files record the option as given."""
    from llm_embed import optimization, study

    given = []

    class Recording(optimization.EmbeddingTrainer):
        def __init__(self, *args, head_learning_rate=None, **kwargs):
            given.append(head_learning_rate)
            super().__init__(*args, head_learning_rate=head_learning_rate, **kwargs)

    monkeypatch.setattr(optimization, "EmbeddingTrainer", Recording)
    argv = [*small_study_argv(tiny_backbone_dir), "--designs", "1", "2", "--head-learning-rate", "1e-3",
            "--num-latents", "4", "--pooling-attention-heads", "2", "--pooling-head-dim", "8", "--no-report"]
    with caplog.at_level(logging.INFO, logger="llm_embed.study"):
        study.main(argv)
    assert given == [None, 1e-3]
    assert caplog.text.count("--head-learning-rate does not apply to design") == 1
    assert "does not apply to design 1 (1: causal + last_token)" in caplog.text
    for design in (1, 2):
        run = json.loads((study_folder / "out" / "runs" / f"design{design}_seed0.json").read_text())
        assert run["arguments"]["head_learning_rate"] == 1e-3 and run["results"]


def test_has_trainable_head_sees_through_lora(tiny_backbone_dir):
    """A head (pooling or --output-dim projection) counts whether the model is plain or LoRA-wrapped
    (peft's base_model.model. prefix, the head in modules_to_save); design 1 has none."""
    from llm_embed import study
    from llm_embed.lora import apply_lora

    args = study.parse_args(["--num-latents", "4", "--pooling-attention-heads", "2", "--pooling-head-dim", "8"])
    projected = study.parse_args(["--output-dim", "8"])
    assert not study.has_trainable_head(study.build_model(args, 1, tiny_backbone_dir))
    assert not study.has_trainable_head(apply_lora(study.build_model(args, 1, tiny_backbone_dir)))
    assert study.has_trainable_head(study.build_model(projected, 1, tiny_backbone_dir))
    assert study.has_trainable_head(apply_lora(study.build_model(projected, 1, tiny_backbone_dir)))
    assert study.has_trainable_head(apply_lora(study.build_model(args, 2, tiny_backbone_dir)))


# ----------------------------------------------------------------------------- --bf16 without CUDA


def test_study_bf16_with_device_auto_runs_on_the_cpu_without_cuda(study_folder, tiny_backbone_dir, monkeypatch):
    """--bf16 with the default --device auto on a machine without CUDA failed after building the
    first design with transformers' "You need to assign use_cpu" (the study told the Trainer the CPU
    only for --device cpu); the Trainer is told the device the study resolved, so it trains as with
    --device cpu."""
    import torch

    from llm_embed import study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    study.main([*small_study_argv(tiny_backbone_dir), "--bf16", "--no-report"])
    run = json.loads((study_folder / "out" / "runs" / "design1_seed0.json").read_text())
    assert run["arguments"]["bf16"] and len(run["losses"]) == 1 and run["results"]


# ----------------------------------------------------------------------------- --warmup-ratio


@pytest.mark.parametrize("ratio, max_steps, warmup", [("0", "4", 0), ("0.1", "4", 1), ("0.5", "4", 2)])
def test_warmup_ratio_sets_the_trainers_warmup_steps(study_folder, tiny_backbone_dir, monkeypatch, ratio, max_steps,
                                                     warmup):
    """--warmup-ratio 0 (accepted as the edge of [0, 1]) still warmed up for one step: the study asked
    the Trainer for max(1, ...) steps. 0 is no warm-up now; a positive ratio of a short run still
    warms up at least one step. The Trainer is stopped as it is built: only its arguments matter."""
    from llm_embed import optimization, study

    class Built(Exception):
        pass

    seen = []

    class Recording(optimization.EmbeddingTrainer):
        def __init__(self, *positional, args, **kwargs):
            seen.append(args.warmup_steps)
            raise Built

    monkeypatch.setattr(optimization, "EmbeddingTrainer", Recording)
    argv = replace_option(small_study_argv(tiny_backbone_dir), "--max-steps", max_steps)
    with pytest.raises(Built):
        study.main([*argv, "--warmup-ratio", ratio, "--no-report"])
    assert seen == [warmup]
