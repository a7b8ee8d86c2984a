"""``llm_embed.train`` under torchrun with the Trainer's FSDP2 on CPU processes (gloo).

accelerate applies FSDP only to accelerator processes: on CPU ranks its ``AcceleratorState`` stays
``MULTI_CPU`` and the Trainer silently runs DDP (``llm_embed.train`` refuses ``--fsdp`` there).
torch's ``fully_shard`` itself runs on CPU over gloo, so this wrapper sets the one value accelerate
withholds (the distributed type, FSDP, when an FSDP plugin was given); everything after it (the
auto-wrap policy from the model's ``_no_split_modules``, ``fully_shard`` of layers and root, the
optimizer over DTensors, our gathered save) is accelerate's, the Trainer's and ours unchanged, as
on GPUs. The path of the JSON file in ``FSDP_PROBE`` receives what was sharded.
"""

import json
import os
import sys

import accelerate.state
from accelerate.utils import DistributedType

import llm_embed.train as train
from llm_embed.contrastive import find_fully_sharded_root

accelerator_state_init = accelerate.state.AcceleratorState.__init__


def init_allowing_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = init_allowing_cpu_fsdp
unsharded_model = train.unsharded_model


def probed_unsharded_model(trainer, *args):
    """Record, on rank 0, how the trained model was sharded before it is gathered for saving."""
    from torch.distributed.fsdp import FSDPModule

    if trainer.is_world_process_zero():
        modules = list(trainer.model.modules())
        json.dump({
            "fsdp_enabled": trainer.is_fsdp_enabled,
            "root": type(find_fully_sharded_root(trainer.model)).__name__,
            "sharded_modules": sorted({type(m).__name__ for m in modules if isinstance(m, FSDPModule)}),
        }, open(os.environ["FSDP_PROBE"], "w"))
    return unsharded_model(trainer, *args)


train.unsharded_model = probed_unsharded_model

if __name__ == "__main__":
    sys.exit(train.cli())
