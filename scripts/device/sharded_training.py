"""Issue 14's sharded engines through ``llm-embed-train`` as users launch them, on GPUs: DDP, the
Trainer's FSDP2 (``examples/configs/fsdp2.json``, GradCache on) and DeepSpeed ZeRO-2 / ZeRO-3 (the
shipped configs, when deepspeed is importable), the same steps from the same backbone, fp32. Each
run's saved model is reloaded through ``AutoModel`` and compared with the DDP run's (losses and
weights); results go to ``OUT/sharded_training.json``.

    python scripts/device/sharded_training.py --backbone .gpu/tiny --out /tmp/sharded      # GPU: 1 process per GPU
    python scripts/device/sharded_training.py --backbone .gpu/tiny --out /tmp/sharded --device cpu   # CPU dry run

On the CPU, accelerate shards nothing (see docs/training.md): the dry run launches FSDP2 through
tests/fsdp_trainer.py (which lets accelerate apply it to CPU processes) and DeepSpeed with one
process, against a one-process plain run. On one GPU every engine runs with one process (ZeRO and
FSDP then shard over a single rank: the code paths, not the memory savings).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def launch(name, processes, extra, args, wrapper=None):
    out = args.out / name
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *([str(wrapper)] if wrapper else ["-m", "llm_embed.train"]),
               "--backbone", str(args.backbone), "--train_file", str(args.out / "rows.jsonl"),
               "--output_dir", str(out),
               "--max_steps", str(args.steps), "--per_device_train_batch_size", "8", "--dataloader_drop_last",
               "--report_to", "none", "--max_seq_length", "64", "--logging_steps", "1", "--optim", "sgd",
               "--learning_rate", "0.05", "--seed", "0", *(["--use_cpu", "--ddp_backend", "gloo"]
                                                           if args.device == "cpu" and not name.startswith("deepspeed")
                                                           else []), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               FSDP_PROBE=str(args.out / f"{name}_probe.json"))
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    (args.out / f"{name}.log").write_text(result.stdout + result.stderr)
    record = {"processes": processes, "seconds": round(time.perf_counter() - start, 1), "exit": result.returncode}
    if result.returncode == 0:
        log = json.loads((out / "trainer_state.json").read_text())["log_history"]
        record["losses"] = [entry["loss"] for entry in log if "loss" in entry]
    else:
        record["error"] = (result.stdout + result.stderr).strip().splitlines()[-1][:500]
    print(name, json.dumps(record), flush=True)
    return record


def compare(name, reference, args):
    from transformers import AutoModel

    import llm_embed  # noqa: F401  (registers the Auto classes)

    weights = AutoModel.from_pretrained(args.out / name).state_dict()
    base = AutoModel.from_pretrained(args.out / reference).state_dict()
    return max(float((weights[key] - base[key]).abs().max()) for key in base)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from tests.conftest import triplet_rows

    (args.out / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in triplet_rows(256)) + "\n")
    import torch

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        sys.exit("no CUDA device: pass --device cpu for the dry run")
    processes = gpus or 2
    report = {"device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus,
              "torch": torch.__version__, "runs": {}}
    runs = report["runs"]
    runs["ddp"] = launch("ddp", processes, [], args)
    runs["fsdp2_gradcache"] = launch(
        "fsdp2_gradcache", processes,
        ["--fsdp", "full_shard auto_wrap", "--fsdp_config", str(ROOT / "examples/configs/fsdp2.json"),
         "--loss_mini_batch_size", "4"], args, wrapper=ROOT / "tests/fsdp_trainer.py" if not gpus else None)
    try:
        import deepspeed  # noqa: F401

        have_deepspeed = True
    except ImportError as error:
        report["deepspeed"] = f"not run: {error}"
        have_deepspeed = False
    ds_processes = gpus or 1  # on CPU accelerate counts one DeepSpeed process (llm-embed-train refuses more)
    if have_deepspeed:
        if ds_processes != processes:
            runs["plain_1_process"] = launch("plain_1_process", 1, [], args)
        for stage in (2, 3):
            runs[f"deepspeed_zero{stage}"] = launch(
                f"deepspeed_zero{stage}", ds_processes,
                ["--deepspeed", str(ROOT / f"examples/configs/deepspeed_zero{stage}.json")], args)
    for name, record in runs.items():
        if name in ("ddp", "plain_1_process") or record["exit"] != 0:
            continue
        reference = "ddp" if record["processes"] == processes else "plain_1_process"
        record["reference"] = reference
        record["max_weight_difference"] = compare(name, reference, args)
        record["max_loss_difference"] = max(abs(a - b) for a, b in zip(record["losses"], runs[reference]["losses"]))
        probe = args.out / f"{name}_probe.json"
        if probe.exists():
            record["sharding"] = json.loads(probe.read_text())
    report["passed"] = all(r["exit"] == 0 and r.get("max_weight_difference", 0) < 1e-4 for r in runs.values())
    (args.out / "sharded_training.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
