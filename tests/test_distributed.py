"""Two CPU processes (gloo) under torchrun: DDP + cross-rank gathering equals one process over the
whole batch; and the training entry point runs under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

from .conftest import triplet_rows

ROOT = Path(__file__).resolve().parents[1]


def torchrun(args, tmp_path, succeeds=True, processes=2):
    """``args`` under ``torchrun --standalone`` (CPU, gloo); asserts the exit status: 0, or (``succeeds=False``)
    non-zero. Returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode == 0) == succeeds, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.parametrize("mode", ["plain", "gradcache", "duplicates"])
def test_two_ranks_equal_one_process_over_the_full_batch(tmp_path, mode):
    """Tolerance: loss 1e-5, every parameter gradient 1e-5 absolute (fp32). ``gradcache``: each
    rank embeds in mini-batches of 2 (GradCache under DDP), the reference is the plain loss. ``duplicates``:
    texts repeated across the ranks' halves, left out of the negatives (``loss_mask_duplicates``, symmetric,
    GradCache): the keys are gathered like the embeddings."""
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests" / "distributed_step.py"), str(out), mode], tmp_path)
    result = json.loads(out.read_text())
    assert result["mode"] == mode
    assert result["world"] == 2 and result["parameters_compared"] > 30
    assert abs(result["mean_rank_loss"] - result["reference_loss"]) < 1e-5, result
    assert result["max_grad_difference"] < 1e-5, result
    assert result["max_grad"] > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("extra", [[], ["--loss_mini_batch_size", "2", "--gradient_accumulation_steps", "2"]],
                         ids=["plain", "gradcache-accumulation"])
def test_entry_point_under_torchrun(tiny_backbone_dir, tmp_path, extra):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(32)) + "\n")
    torchrun(["-m", "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data),
              "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "4",
              "--dataloader_drop_last", "--use_cpu", "--ddp_backend", "gloo", "--report_to", "none",
              "--max_seq_length", "32", "--logging_steps", "1", *extra], tmp_path)
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.encode("hello").shape == (32,)
    losses = [e["loss"] for e in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
              if "loss" in e]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_distributed_run_requires_drop_last(tiny_backbone_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(8)) + "\n")
    result = torchrun(["-m", "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data),
                       "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu", "--ddp_backend", "gloo",
                       "--report_to", "none"], tmp_path, succeeds=False)
    assert "--dataloader_drop_last" in result.stdout + result.stderr
