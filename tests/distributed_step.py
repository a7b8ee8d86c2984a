"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank embeds its half of a global contrastive batch through DDP, with embeddings gathered
across ranks; rank 0 compares the averaged gradients and the mean loss with one process computing
the same loss over the whole batch, and writes the differences to the JSON file given as argv[1].
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llm_embed.encoding import pad_batch
from tests.conftest import tiny_model

GLOBAL_QUERIES, NEGATIVES = 8, 1


def rows(generator, n, low, high):
    return [torch.randint(5, 1000, (int(torch.randint(low, high, (1,), generator=generator)),),
                          generator=generator).tolist()
            for _ in range(n)]


def global_batch(duplicates: bool = False):
    generator = torch.Generator().manual_seed(0)
    queries = rows(generator, GLOBAL_QUERIES, 3, 9)
    positives = rows(generator, GLOBAL_QUERIES, 4, 12)
    negatives = rows(generator, GLOBAL_QUERIES * NEGATIVES, 4, 12)
    if duplicates:  # repeated texts across the two ranks' halves (mode "duplicates")
        positives[5] = positives[0]  # one positive in two rows
        queries[6] = queries[1]  # one query with two answers
        negatives[3] = positives[6]  # another row's positive as a hard negative
    return queries, positives, negatives


def tensors(queries, positives, negatives):
    q_ids, q_mask = pad_batch(queries, 0, "right")
    d_ids, d_mask = pad_batch(positives + negatives, 0, "right")
    return dict(query_input_ids=q_ids, query_attention_mask=q_mask,
                document_input_ids=d_ids, document_attention_mask=d_mask)


def rank_batch(rank: int, world: int, duplicates: bool = False) -> dict:
    """This rank's share of the global batch: its queries, their positives and hard negatives."""
    queries, positives, negatives = global_batch(duplicates)
    per_rank = GLOBAL_QUERIES // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    return tensors(queries[mine], positives[mine], negatives[mine.start * NEGATIVES:mine.stop * NEGATIVES])


def one_process_sgd(steps: int, learning_rate: float) -> tuple[dict, dict, list[float]]:
    """The reference of the sharded runs: one unsharded process taking ``steps`` SGD steps with the
    plain loss over the whole global batch. Returns the initial and final weights and the losses."""
    reference = tiny_model("llama", "bidirectional", "multi_layer", loss_gather_across_ranks=False).train()
    initial = {name: value.detach().clone() for name, value in reference.state_dict().items()}
    optimizer = torch.optim.SGD(reference.parameters(), lr=learning_rate)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = reference(**tensors(*global_batch())).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return initial, reference.state_dict(), losses


def main(out_path, mode="plain"):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    duplicates = mode == "duplicates"
    queries, positives, negatives = global_batch(duplicates)
    local = rank_batch(rank, world, duplicates)

    mini_batch = 2 if mode in ("gradcache", "duplicates") else None
    options = dict(loss_mask_duplicates=True, loss_symmetric=True) if duplicates else {}
    model = tiny_model("llama", "bidirectional", "multi_layer", loss_mini_batch_size=mini_batch, **options).train()
    ddp = DistributedDataParallel(model)
    for _ in range(1 if mini_batch is None else 2):  # GradCache: a second step reuses the wrapper it found
        model.zero_grad()
        loss = ddp(**local).loss
        loss.backward()
    assert ddp.require_backward_grad_sync
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())

    if rank == 0:
        reference = tiny_model("llama", "bidirectional", "multi_layer", loss_gather_across_ranks=False,
                               **options).train()
        reference_loss = reference(**tensors(queries, positives, negatives)).loss
        reference_loss.backward()
        grads = dict(model.named_parameters())
        differences = {
            name: float((grads[name].grad - param.grad).abs().max())
            for name, param in reference.named_parameters() if param.grad is not None
        }
        json.dump({
            "world": world,
            "mean_rank_loss": float(torch.stack(losses).mean()),
            "reference_loss": float(reference_loss),
            "max_grad_difference": max(differences.values()),
            "max_grad": max(float(p.grad.abs().max()) for p in reference.parameters() if p.grad is not None),
            "parameters_compared": len(differences),
            "mode": mode,
        }, open(out_path, "w"))
    dist.barrier()
    dist.destroy_process_group()
    # Leave without tearing down the DDP reducer: its destructor joins gloo's worker thread, which
    # may be freeing a finished work object and wait for the GIL the main thread holds (a shutdown
    # deadlock of torch's gloo backend seen once in CI-like runs).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
