"""What a LoRA adapter's and a checkpoint's records carry to the next use: the options that change encode
(``load_lora``), the last checkpoint (``resume_from_checkpoint: true``), ``save_total_limit``, and the
records themselves, written before the Trainer deletes older checkpoints."""

import json

import numpy as np
import pytest
import transformers.trainer

from llm_embed import LLMEmbeddingModel

from .conftest import triplet_rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_args(backbone, out, data, *more):
    return ["--backbone", str(backbone), "--output_dir", str(out), "--train_file", data, "--pooling", "mean",
            "--max_seq_length", "32", "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu",
            "--disable_tqdm", "true", *more]


class Stop(Exception):
    """Raised in place of training: the test has seen the arguments the run trains with."""


def stop_training(monkeypatch) -> dict:
    """From now on ``llm-embed-train`` does not train: the ``TrainingArguments`` and
    ``resume_from_checkpoint`` it would train with land in the dict returned, and it stops with :class:`Stop`."""
    from llm_embed.optimization import EmbeddingTrainer

    seen = {}

    def train(self, resume_from_checkpoint=None, **kwargs):
        seen.update(args=self.args, resume_from_checkpoint=resume_from_checkpoint)
        raise Stop

    monkeypatch.setattr(EmbeddingTrainer, "train", train)
    return seen


def test_load_lora_refuses_a_base_without_the_recorded_options_that_change_encode(tiny_backbone_dir, tmp_path):
    """Adapters of ``llm-embed-train --lora --max_seq_length 32`` put on a base built at the default 512
    were accepted, and a long text's vector was 0.43 off in cosine from the merged model's (the one
    llm-embed-evaluate scores). Each differing option is named with both values, with the
    ``from_backbone`` keywords that build the right base; built so, and through llm-embed-evaluate's
    loader (which builds the base from the record), the adapters load and match."""
    pytest.importorskip("peft")
    from llm_embed.evaluation.runner import load_model
    from llm_embed.lora import LORA_BASE_FILE, apply_lora, base_description, load_lora, merge_lora

    options = {"max_seq_length": 8, "normalize": False, "prompts": {"query": "Q: ", "document": ""},
               "default_prompt_name": "query"}
    trained = apply_lora(LLMEmbeddingModel.from_backbone(tiny_backbone_dir, pooling="mean", **options), r=2, alpha=4)
    adapter = tmp_path / "adapter"
    trained.save_pretrained(adapter)
    (adapter / LORA_BASE_FILE).write_text(json.dumps(base_description(
        str(tiny_backbone_dir), "bidirectional", "mean", None, {"pooling": "mean", **options})))
    with pytest.raises(ValueError) as refusal:
        load_lora(LLMEmbeddingModel.from_backbone(tiny_backbone_dir, pooling="mean", max_seq_length=16,
                                                  normalize=True), str(adapter))
    message = str(refusal.value)
    for difference in ("normalize=False there, True in the model", "max_seq_length=8 there, 16 in the model",
                       "default_prompt_name='query' there, None in the model", "prompts={'query': 'Q: '"):
        assert difference in message
    assert ("LLMEmbeddingModel.from_backbone(decoder, attention='bidirectional', pooling='mean', max_seq_length=8, "
            "normalize=False, prompts={'query': 'Q: ', 'document': ''}, default_prompt_name='query')") in message
    assert "set it on the model's config afterwards (model.config.normalize = ...)" in message

    texts = ["what about the cat?", " ".join(f"word{i}" for i in range(40))]
    merged = merge_lora(trained).eval()
    loaded = load_lora(LLMEmbeddingModel.from_backbone(tiny_backbone_dir, pooling="mean", **options), str(adapter))
    np.testing.assert_allclose(loaded.eval().encode(texts), merged.encode(texts), atol=1e-5)
    np.testing.assert_allclose(load_model(adapter).encode(texts), merged.encode(texts), atol=1e-5)


def test_resume_from_checkpoint_true_in_an_arguments_file_is_the_last_checkpoint(tiny_backbone_dir, tmp_path,
                                                                                 monkeypatch):
    """``"resume_from_checkpoint": true`` (the Trainer's own spelling) failed with "expected str, bytes or
    os.PathLike object, not bool"; it is now the last checkpoint in output_dir, checked and with its
    cadence, as a folder would be; false is no resume; true without a checkpoint is refused by name."""
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(8))
    main(run_args(tiny_backbone_dir, tmp_path / "m", data, "--max_steps", "2", "--save_steps", "1"))
    seen_args = stop_training(monkeypatch)
    arguments = tmp_path / "args.json"
    values = {"backbone": str(tiny_backbone_dir), "output_dir": str(tmp_path / "m"), "train_file": data,
              "pooling": "mean", "max_seq_length": 32, "per_device_train_batch_size": 2, "report_to": "none",
              "use_cpu": True, "max_steps": 4}
    arguments.write_text(json.dumps({**values, "resume_from_checkpoint": True}))
    with pytest.raises(Stop):
        main([str(arguments)])
    assert seen_args["resume_from_checkpoint"] == str(tmp_path / "m" / "checkpoint-2")
    assert (seen_args["args"].save_strategy, seen_args["args"].save_steps) == ("steps", 1)  # the cadence it had
    arguments.write_text(json.dumps({**values, "resume_from_checkpoint": True, "pooling": "multi_layer"}))
    with pytest.raises(ValueError, match=r"checkpoint-2 was written by a run with --pooling \"mean\""):
        main([str(arguments)])
    arguments.write_text(json.dumps({**values, "resume_from_checkpoint": False}))
    with pytest.raises(Stop):
        main([str(arguments)])
    assert seen_args["resume_from_checkpoint"] is None and seen_args["args"].save_strategy == "no"
    arguments.write_text(json.dumps({**values, "output_dir": str(tmp_path / "new"), "resume_from_checkpoint": True}))
    with pytest.raises(ValueError, match=r"resumes from the last checkpoint-N folder in output_dir .*new, and there "
                                         "is none"):
        main([str(arguments)])


def test_records_are_in_a_checkpoint_before_older_checkpoints_are_deleted(tiny_backbone_dir, tmp_path, monkeypatch):
    """The records were written in a callback's on_save, after the Trainer had deleted older checkpoints
    (``save_total_limit``): stopped in between, a run left its only checkpoint without them, and a
    resume of it went unchecked (with other options too). Now they are in the checkpoint when the
    deletion starts."""
    pytest.importorskip("peft")
    from llm_embed.lora import LORA_BASE_FILE
    from llm_embed.resume import RUN_FILE
    from llm_embed.train import main

    rotate = transformers.trainer.rotate_checkpoints  # transformers 5.2 to 5.24: _save_checkpoint's last step
    at_rotation = []

    def spy(output_dir, *args, **kwargs):
        newest = max((tmp_path / "m").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        at_rotation.append(sorted(path.name for path in newest.iterdir() if path.name.startswith("llm_embed_")))
        return rotate(output_dir, *args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", spy)
    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(8))
    main(run_args(tiny_backbone_dir, tmp_path / "m", data, "--max_steps", "2", "--save_steps", "1",
                  "--save_total_limit", "1", "--lora", "--lora_r", "2", "--lora_alpha", "4"))
    assert at_rotation == [sorted([RUN_FILE, LORA_BASE_FILE])] * 2
    assert [path.name for path in (tmp_path / "m").glob("checkpoint-*")] == ["checkpoint-2"]


def test_a_resumed_run_keeps_the_save_total_limit_of_the_run_it_continues(tiny_backbone_dir, tmp_path, monkeypatch):
    """A resumed run without save options took the cadence of the run it continues but not its
    ``save_total_limit``, and kept every checkpoint; now it takes both, and a limit given wins."""
    from llm_embed.resume import RUN_FILE
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(8))
    main(run_args(tiny_backbone_dir, tmp_path / "m", data, "--max_steps", "3", "--save_steps", "1",
                  "--save_total_limit", "2"))
    assert sorted(path.name for path in (tmp_path / "m").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    checkpoint = tmp_path / "m" / "checkpoint-3"
    assert json.loads((checkpoint / RUN_FILE).read_text())["save_total_limit"] == 2
    seen_args = stop_training(monkeypatch)
    resume = run_args(tiny_backbone_dir, tmp_path / "r", data, "--max_steps", "6", "--resume_from_checkpoint",
                      str(checkpoint))
    for more, expected in (([], 2), (["--save_total_lim", "5"], 5), (["--save-total-limit=5"], 5)):
        with pytest.raises(Stop):
            main(resume + more)
        args = seen_args["args"]
        assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 1, expected)
    with pytest.raises(Stop):
        main(resume + ["--save_steps", "2"])  # a cadence of its own: nothing is inherited
    assert (seen_args["args"].save_steps, seen_args["args"].save_total_limit) == (2, None)
