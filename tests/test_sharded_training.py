"""Sharded training on 2 CPU processes (gloo) under torchrun: FSDP2 steps equal one unsharded
process; the Trainer's FSDP2 (through accelerate) trains and saves what DDP trains and saves,
with GradCache and LoRA; ``--fsdp`` is refused where accelerate would silently not shard."""

import json

import pytest
from transformers import AutoModel

from .conftest import triplet_rows
from .test_distributed import ROOT, torchrun


@pytest.mark.parametrize("mode", ["plain", "gradcache"])
def test_fsdp2_steps_equal_one_process(tmp_path, mode):
    """Two SGD steps; tolerance 1e-5 on each step's loss and on every updated weight (fp32)."""
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests" / "fsdp_step.py"), str(out), mode], tmp_path)
    result = json.loads(out.read_text())
    assert result["mode"] == mode and result["world"] == 2
    assert result["sharded_layers"] == result["layers"] > 1 and result["parameters_compared"] > 30
    assert result["embedding_rows_on_rank0"] * 2 == result["embedding_rows"]  # really sharded, not replicated
    for loss, reference in zip(result["losses"], result["reference_losses"], strict=True):
        assert abs(loss - reference) < 1e-5, result
    assert result["losses"][1] < result["losses"][0]  # the steps train
    assert result["max_weight_difference"] < 1e-5, result
    assert result["max_weight_change"] > 1e-2  # the comparison is not between unchanged weights


def train_run(backbone, data, out, tmp_path, extra, wrapper=None):
    args = ["--backbone", str(backbone), "--train_file", str(data), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--dataloader_drop_last", "--use_cpu", "--ddp_backend", "gloo",
            "--report_to", "none", "--max_seq_length", "32", "--logging_steps", "1", "--optim", "sgd",
            "--learning_rate", "0.05", *extra]
    torchrun([str(wrapper), *args] if wrapper else ["-m", "llm_embed.train", *args], tmp_path)
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return AutoModel.from_pretrained(out), [entry["loss"] for entry in log if "loss" in entry]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_trainer_fsdp2_trains_and_saves_what_ddp_does(tiny_backbone_dir, tmp_path, monkeypatch, lora):
    """The same 2 steps through ``llm_embed.train``: FSDP2 (auto-wrapped layers, GradCache mini-batches
    of 2) and DDP (plain loss) save models that load through AutoModel with equal weights."""
    extra = []
    if lora:
        pytest.importorskip("peft")
        extra = ["--lora", "--lora_dropout", "0"]  # dropout draws differ between GradCache and the plain loss
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(32)) + "\n")
    probe = tmp_path / "probe.json"
    monkeypatch.setenv("FSDP_PROBE", str(probe))
    fsdp_model, fsdp_losses = train_run(
        tiny_backbone_dir, data, tmp_path / "fsdp", tmp_path,
        [*extra, "--fsdp", "full_shard auto_wrap", "--fsdp_config", '{"fsdp_version": 2}',
         "--loss_mini_batch_size", "2"],
        wrapper=ROOT / "tests" / "fsdp_trainer.py",
    )
    ddp_model, ddp_losses = train_run(tiny_backbone_dir, data, tmp_path / "ddp", tmp_path, extra)

    sharding = json.loads(probe.read_text())
    assert sharding["fsdp_enabled"]
    assert sharding["root"] == ("FSDPPeftModel" if lora else "FSDPLLMEmbeddingModel")  # FSDP2 renames the class
    assert "FSDPLlamaDecoderLayer" in sharding["sharded_modules"]  # auto-wrapped from the model's _no_split_modules
    assert len(fsdp_losses) == 2 and fsdp_losses == pytest.approx(ddp_losses, abs=1e-5)
    initial = AutoModel.from_pretrained(tiny_backbone_dir).state_dict()
    fsdp_weights, ddp_weights = fsdp_model.state_dict(), ddp_model.state_dict()
    assert fsdp_weights.keys() == ddp_weights.keys()
    assert max(float((fsdp_weights[k] - ddp_weights[k]).abs().max()) for k in ddp_weights) < 1e-5
    moved = max(float((fsdp_weights["backbone." + k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3  # both trained the backbone (merged LoRA adapters included), not a no-op
    texts = ["what about the moon?", "a text on the river"]
    assert abs(fsdp_model.encode(texts) - ddp_model.encode(texts)).max() < 1e-5
    if lora:
        assert (tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors").is_file()


def test_fsdp_is_refused_where_accelerate_does_not_shard(tiny_backbone_dir, tmp_path):
    """On CPU processes accelerate leaves FSDP out and the Trainer would run DDP without a word."""
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(16)) + "\n")
    result = torchrun(["-m", "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data),
                       "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu", "--ddp_backend", "gloo",
                       "--report_to", "none", "--dataloader_drop_last", "--fsdp", "full_shard auto_wrap",
                       "--fsdp_config", '{"fsdp_version": 2}'], tmp_path, succeeds=False)
    assert "--fsdp was given but accelerate did not apply FSDP" in result.stdout + result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ------------------------------------------------------------------ DeepSpeed (CPU accelerator, gloo)

CONFIGS = ROOT / "examples" / "configs"


@pytest.mark.parametrize("stage", ["2", "3"])
def test_deepspeed_zero_steps_equal_one_process(tmp_path, stage):
    """The DeepSpeed engine itself over 2 CPU ranks: losses and the saved, reloaded weights within 1e-5."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests" / "deepspeed_step.py"), str(out), stage], tmp_path)
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["accelerator"] == "cpu" and result["parameters_compared"] > 30
    if stage == "3":
        assert result["rank0_partition_fraction"] == pytest.approx(0.5, abs=0.01)  # each rank holds half
    for loss, reference in zip(result["losses"], result["reference_losses"], strict=True):
        assert abs(loss - reference) < 1e-5, result
    assert result["max_weight_difference"] < 1e-5, result
    assert result["max_weight_change"] > 1e-2


def test_gradcache_under_deepspeed_is_refused(tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests" / "deepspeed_step.py"), str(out), "2", "gradcache"], tmp_path)
    assert "DeepSpeed ZeRO cannot run it" in json.loads(out.read_text())["error"]


def single_process_run(backbone, data, out, tmp_path, extra):
    """``llm_embed.train`` as one torchrun process (LOCAL_RANK set, as accelerate's DeepSpeed path wants)."""
    torchrun(["-m", "llm_embed.train", "--backbone", str(backbone), "--train_file", str(data), "--output_dir",
              str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
              "--max_seq_length", "32", "--logging_steps", "1", "--optim", "sgd", "--learning_rate", "0.05", *extra],
             tmp_path, processes=1)
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return AutoModel.from_pretrained(out), [entry["loss"] for entry in log if "loss" in entry]


@pytest.mark.parametrize("config", ["deepspeed_zero2.json", "deepspeed_zero3.json"])
def test_trainer_deepspeed_with_the_shipped_configs(tiny_backbone_dir, tmp_path, config):
    """The shipped configs ("auto" values filled by the Trainer, ZeRO-3 bucket sizes from the
    backbone's hidden size) run through llm-embed-train and save the weights a plain run saves."""
    pytest.importorskip("deepspeed")
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(16)) + "\n")
    sharded, sharded_losses = single_process_run(tiny_backbone_dir, data, tmp_path / "ds", tmp_path,
                                                 ["--deepspeed", str(CONFIGS / config)])
    plain, plain_losses = single_process_run(tiny_backbone_dir, data, tmp_path / "plain", tmp_path, [])
    assert len(sharded_losses) == 2 and sharded_losses == pytest.approx(plain_losses, abs=1e-5)
    weights, reference = sharded.state_dict(), plain.state_dict()
    assert max(float((weights[k] - reference[k]).abs().max()) for k in reference) < 1e-5
    initial = AutoModel.from_pretrained(tiny_backbone_dir).state_dict()
    assert max(float((weights["backbone." + k] - v).abs().max()) for k, v in initial.items()) > 1e-3


def test_deepspeed_on_cpu_processes_is_refused(tiny_backbone_dir, tmp_path):
    """accelerate starts DeepSpeed's process group on CPU ranks but counts one process (unsplit data)."""
    pytest.importorskip("deepspeed")
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(16)) + "\n")
    result = torchrun(["-m", "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data),
                       "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none",
                       "--dataloader_drop_last", "--deepspeed", str(CONFIGS / "deepspeed_zero2.json")],
                      tmp_path, succeeds=False)
    assert "2 processes were started but accelerate counts 1" in result.stdout + result.stderr


def test_fsdp2_config_is_accepted_by_training_arguments(tmp_path):
    """The shipped FSDP2 config parses into the accelerate plugin the Trainer would build."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard auto_wrap",
                             fsdp_config=str(CONFIGS / "fsdp2.json"), report_to="none")
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # layers from _no_split_modules
    assert args.fsdp_config["state_dict_type"] == "FULL_STATE_DICT"
