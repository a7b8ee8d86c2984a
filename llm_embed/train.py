"""Fine-tune an embedding model with the plain ``transformers.Trainer``: ``llm-embed-train`` /
``examples/train.py``.

    llm-embed-train --train_file ../shared/data/nli_triplets/snli_dev_triplets.jsonl \
        --output_dir out/smollm2-mlpool --max_steps 20 --per_device_train_batch_size 8

Every ``TrainingArguments`` option works (logging, eval, checkpoints, resume, bf16, gradient
accumulation; ``torchrun`` / ``accelerate launch`` for several processes). The model is built with
:meth:`LLMEmbeddingModel.from_backbone` (default backbone: the bundled SmolLM2-135M), trained on
(query, positive, negative) rows, and saved where ``AutoModel.from_pretrained`` loads it; with
``--lora`` the adapters are merged into the saved model and also kept under ``adapter/``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from .data import ContrastiveDataCollator, TripletDataset
from .modeling_llm_embed import LLMEmbeddingModel

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=None, metadata={"help": "decoder folder or Hub id (default: the bundled SmolLM2-135M-Instruct)"}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside --backbone"})
    attention: str = field(default="bidirectional", metadata={"help": "causal or bidirectional"})
    pooling: str = field(default="multi_layer", metadata={"help": "last_token, mean, weighted_mean, latent_attention, multi_layer"})
    num_latents: int = 16
    pooling_heads: int = 8
    pooling_head_dim: int = 64
    pooling_ff_mult: float = 1.0
    output_dim: int | None = None
    max_seq_length: int = field(default=512, metadata={"help": "token budget of one text, EOS included"})
    loss_temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature (paper: 0.05)"})
    loss_symmetric: bool = False
    loss_mini_batch_size: int | None = field(
        default=None, metadata={"help": "GradCache: embed this many texts at a time (contrastive batch unbounded by memory)"}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flex_attention, ..."})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters on the backbone (needs peft)"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "JSONL rows {query|anchor, positive, negative|negatives}"})
    eval_file: str | None = field(default=None, metadata={"help": "JSONL in the same format, for eval loss"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    max_eval_rows: int | None = None
    query_prompt_name: str | None = "query"
    document_prompt_name: str | None = "document"


CONFIG_FIELDS = ("num_latents", "pooling_heads", "pooling_head_dim", "pooling_ff_mult", "output_dim",
                 "max_seq_length", "loss_temperature", "loss_symmetric", "loss_mini_batch_size")


def build_model(model_args: ModelArguments) -> LLMEmbeddingModel:
    backbone = model_args.backbone
    if backbone is None:
        from .bundled import smollm2_backbone_path

        backbone = smollm2_backbone_path()
    return LLMEmbeddingModel.from_backbone(
        backbone,
        attention=model_args.attention,
        pooling=model_args.pooling,
        gguf_file=model_args.gguf_file,
        attn_implementation=model_args.attn_implementation,
        **{name: getattr(model_args, name) for name in CONFIG_FIELDS},
    )


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> str:
    """Train and save; returns the folder of the final (merged) model."""
    set_seed(training_args.seed)
    # data and settings first: a bad row or option fails in seconds, not after the backbone has loaded
    train_data = TripletDataset.from_any(data_args.train_file, data_args.max_train_rows)
    eval_data = TripletDataset.from_any(data_args.eval_file, data_args.max_eval_rows) if data_args.eval_file else None
    if training_args.world_size > 1 and not training_args.dataloader_drop_last:
        raise ValueError("training on several processes gathers equal per-rank batches: pass --dataloader_drop_last")
    model = build_model(model_args)
    tokenizer, config = model.tokenizer, model.config
    if training_args.remove_unused_columns:
        logger.info("setting remove_unused_columns=False: rows reach the collator as text, not as forward() arguments")
        training_args.remove_unused_columns = False
    collator = ContrastiveDataCollator(tokenizer, config, data_args.query_prompt_name, data_args.document_prompt_name)
    if model_args.lora:
        from .lora import apply_lora

        model = apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)
        model.print_trainable_parameters()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_data is not None:
        logger.info("eval: %s", trainer.evaluate())
    output_dir = training_args.output_dir
    if trainer.is_world_process_zero():
        if model_args.lora:
            from .lora import merge_lora

            model.save_pretrained(os.path.join(output_dir, "adapter"))
            merge_lora(model).save_pretrained(output_dir)
        else:
            trainer.save_model(output_dir)
        trainer.save_state()  # trainer_state.json: the log history (losses) beside the model
        logger.info("saved the trained model to %s (loads with AutoModel.from_pretrained)", output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> str:
    """Parse the arguments (``sys.argv`` by default), train, save; returns the saved model's folder.
    The console command runs :func:`cli`, which turns this into an exit status."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    args = argv if argv is not None else sys.argv[1:]
    if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
        model_args, data_args, training_args = parser.parse_yaml_file(args[0]) if not args[0].endswith(".json") \
            else parser.parse_json_file(args[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(model_args, data_args, training_args)


def cli() -> int:
    """``llm-embed-train``: exit status 0 on success, 1 with a one-line reason on an error (see :mod:`llm_embed.cli`)."""
    from .cli import run_console

    return run_console(main, "llm-embed-train")


if __name__ == "__main__":
    sys.exit(cli())
