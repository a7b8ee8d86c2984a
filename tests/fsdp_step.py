"""Run by tests/test_sharded_training.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

FSDP2 (``fully_shard`` on every decoder layer and on the model, as accelerate's auto-wrap does)
over 2 ranks: each rank embeds its half of a global contrastive batch, embeddings are gathered
across ranks for the loss, optionally in GradCache mini-batches; two SGD steps. Rank 0 compares
each step's mean loss and the updated (gathered) weights with one unsharded process taking the
same steps with the plain loss over the whole batch, and writes the differences to argv[1].
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from tests.conftest import tiny_model
from tests.distributed_step import one_process_sgd, rank_batch

STEPS, LEARNING_RATE = 2, 0.02


def main(out_path, mode="plain"):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = rank_batch(rank, world)

    mini_batch = 2 if mode == "gradcache" else None
    model = tiny_model("llama", "bidirectional", "multi_layer", loss_mini_batch_size=mini_batch).train()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.backbone.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(**local).loss
        loss.backward()
        optimizer.step()
        gathered = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(gathered, loss.detach())
        losses.append(float(torch.stack(gathered).mean()))
    weights = {name: parameter.full_tensor().detach() for name, parameter in model.named_parameters()}
    sharded_layers = sum(isinstance(layer, FSDPModule) for layer in model.backbone.layers)
    shard_rows = model.backbone.embed_tokens.weight.to_local().shape[0]

    if rank == 0:
        initial, final, reference_losses = one_process_sgd(STEPS, LEARNING_RATE)
        json.dump({
            "world": world,
            "mode": mode,
            "losses": losses,
            "reference_losses": reference_losses,
            "max_weight_difference": max(float((weights[n] - final[n]).abs().max()) for n in weights),
            "max_weight_change": max(float((final[n] - initial[n]).abs().max()) for n in final),
            "parameters_compared": len(weights),
            "sharded_layers": sharded_layers,
            "layers": len(model.backbone.layers),
            "embedding_rows_on_rank0": shard_rows,
            "embedding_rows": final["backbone.embed_tokens.weight"].shape[0],
        }, open(out_path, "w"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # as tests/distributed_step.py: no teardown of gloo's worker threads at exit


if __name__ == "__main__":
    main(*sys.argv[1:])
