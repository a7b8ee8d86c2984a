"""Fine-tune any of the paper's designs on a JSONL of triplets with the plain transformers Trainer.

    python examples/train.py --train_file ../shared/data/nli_triplets/snli_dev_triplets.jsonl \
        --output_dir out/smollm2 --max_steps 10 --per_device_train_batch_size 8 --max_seq_length 64

All arguments: python examples/train.py --help (model, data and every TrainingArguments option).
Same as the console command ``llm-embed-train``.
"""

from llm_embed.train import cli

if __name__ == "__main__":
    raise SystemExit(cli())  # exit status 0 on success, 1 with a one-line reason on an error
