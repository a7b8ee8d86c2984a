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


def torchrun(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_two_ranks_equal_one_process_over_the_full_batch(tmp_path):
    """Tolerance: loss 1e-5, every parameter gradient 1e-5 absolute (fp32)."""
    out = tmp_path / "result.json"
    torchrun([str(ROOT / "tests" / "distributed_step.py"), str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["parameters_compared"] > 30
    assert abs(result["mean_rank_loss"] - result["reference_loss"]) < 1e-5, result
    assert result["max_grad_difference"] < 1e-5, result
    assert result["max_grad"] > 1e-3  # the comparison is not between zeros


def test_entry_point_under_torchrun(tiny_backbone_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(16)) + "\n")
    torchrun(["-m", "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data),
              "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "4",
              "--dataloader_drop_last", "--use_cpu", "--ddp_backend", "gloo", "--report_to", "none",
              "--max_seq_length", "32"], tmp_path)
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.encode("hello").shape == (32,)


def test_distributed_run_requires_drop_last(tiny_backbone_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(8)) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "llm_embed.train", "--backbone", str(tiny_backbone_dir), "--train_file", str(data), "--output_dir",
               str(tmp_path / "out"), "--max_steps", "1", "--use_cpu", "--ddp_backend", "gloo", "--report_to", "none"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "--dataloader_drop_last" in result.stdout + result.stderr
