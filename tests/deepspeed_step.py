"""Run by tests/test_sharded_training.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

DeepSpeed ZeRO (stage argv[2]) over 2 ranks on DeepSpeed's CPU accelerator: each rank embeds its
half of a global contrastive batch, embeddings gathered across ranks; two SGD steps through the
DeepSpeed engine (no gradient clipping: DeepSpeed clips at 1.0 unless told). Rank 0 gathers the
weights (ZeRO-3: the consolidated state dict), saves them as a model, reloads it through
``AutoModel`` and compares losses and weights with one plain process taking the same steps over the
whole batch; the differences go to argv[1]. Mode ``gradcache`` records the error GradCache raises.
"""

import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModel

from tests.conftest import tiny_model
from tests.distributed_step import GLOBAL_QUERIES, one_process_sgd, rank_batch

STEPS, LEARNING_RATE = 2, 0.02


def main(out_path, stage, mode="plain"):
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = rank_batch(rank, world)
    per_rank = GLOBAL_QUERIES // world

    model = tiny_model("llama", "bidirectional", "multi_layer",
                       loss_mini_batch_size=2 if mode == "gradcache" else None).train()
    config = {"train_micro_batch_size_per_gpu": per_rank, "gradient_accumulation_steps": 1,
              "train_batch_size": GLOBAL_QUERIES, "zero_optimization": {"stage": int(stage)},
              "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0}
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    result = {"world": world, "stage": int(stage), "mode": mode, "accelerator": deepspeed.get_accelerator()._name}
    if mode == "gradcache":
        try:
            engine(**local)
        except ValueError as error:  # recorded for the test, which asserts on it
            result["error"] = str(error)
        if rank == 0:
            json.dump(result, open(out_path, "w"))
        dist.barrier()
        os._exit(0)
    losses = []
    for _ in range(STEPS):
        loss = engine(**local).loss
        engine.backward(loss)
        engine.step()
        gathered = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(gathered, loss.detach().float())
        losses.append(float(torch.stack(gathered).mean()))
    if int(stage) == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective; the full weights on rank 0
        shard_numel = sum(parameter.ds_tensor.numel() for parameter in engine.module.parameters())
    else:
        state_dict = {name: value.detach().clone() for name, value in engine.module.state_dict().items()}
        shard_numel = None

    if rank == 0:
        saved = tiny_model("llama", "bidirectional", "multi_layer")
        saved.load_state_dict(state_dict, strict=True)
        folder = os.path.join(os.path.dirname(out_path), "saved")
        saved.save_pretrained(folder)
        weights = AutoModel.from_pretrained(folder).state_dict()

        initial, final, reference_losses = one_process_sgd(STEPS, LEARNING_RATE)
        result.update({
            "losses": losses,
            "reference_losses": reference_losses,
            "max_weight_difference": max(float((weights[n] - final[n]).abs().max()) for n in final),
            "max_weight_change": max(float((final[n] - initial[n]).abs().max()) for n in final),
            "parameters_compared": len(final),
            "rank0_partition_fraction": None if shard_numel is None else shard_numel / sum(
                value.numel() for value in final.values()),
        })
        json.dump(result, open(out_path, "w"))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as tests/distributed_step.py: no teardown of gloo's worker threads at exit


if __name__ == "__main__":
    main(*sys.argv[1:])
