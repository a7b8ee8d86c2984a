"""Collator, plain transformers.Trainer, resume, entry point, LoRA."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, Trainer, TrainingArguments

from llm_embed import LLMEmbeddingModel
from llm_embed.data import ContrastiveDataCollator, TripletDataset

from .conftest import tiny_model, triplet_rows


@pytest.fixture()
def model(tokenizer):
    model = tiny_model("llama", "bidirectional", "multi_layer")
    model.tokenizer = tokenizer
    return model


def args(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=6,
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    base.update(overrides)
    return TrainingArguments(**base)


# ----------------------------------------------------------------------------- collator


def test_collator_layout_and_prompts(model, tokenizer):
    collator = ContrastiveDataCollator(tokenizer, model.config)
    rows = triplet_rows(3, negatives=2)
    batch = collator(rows)
    assert batch["query_input_ids"].shape[0] == 3 and batch["document_input_ids"].shape[0] == 3 * 3
    first_query = batch["query_input_ids"][0][batch["query_attention_mask"][0].bool()].tolist()
    assert first_query[:-1] == tokenizer(model.config.prompts["query"] + rows[0]["query"])["input_ids"]
    assert first_query[-1] == tokenizer.eos_token_id
    # documents: positives first, then the negatives of query 0, query 1, ...
    row_of = lambda i: batch["document_input_ids"][i][batch["document_attention_mask"][i].bool()].tolist()[:-1]
    assert row_of(1) == tokenizer(rows[1]["positive"])["input_ids"]
    assert row_of(3) == tokenizer(rows[0]["negatives"][0])["input_ids"]
    assert row_of(6) == tokenizer(rows[1]["negatives"][1])["input_ids"]


def test_collator_accepts_anchor_naming_and_no_negatives(model, tokenizer):
    collator = ContrastiveDataCollator(tokenizer, model.config)
    batch = collator([{"anchor": "a b", "positive": "c d"}, {"anchor": "e f", "positive": "g h"}])
    assert batch["document_input_ids"].shape[0] == 2
    assert model(**batch).loss > 0


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([{"positive": "p"}], ValueError, "missing query \\(or anchor\\)"),
        ([{"query": "q"}], ValueError, "missing positive"),
        ([{"query": "q", "positive": "  "}], ValueError, "positive is empty"),
        ([{"query": "", "positive": "p"}], ValueError, "query is empty"),
        ([{"query": "q", "positive": "p", "negatives": ["n", ""]}], ValueError, "negative 1 is empty"),
        ([{"query": "q", "positive": 3}], TypeError, "positive must be a string"),
        ([{"query": "q", "positive": "p", "negative": "n"}, {"query": "q", "positive": "p"}], ValueError,
         "different numbers of hard negatives"),
        ([{}], ValueError, "remove_unused_columns=False"),
    ],
)
def test_collator_bad_rows(model, tokenizer, rows, error, message):
    with pytest.raises(error, match=message):
        ContrastiveDataCollator(tokenizer, model.config)(rows)


def test_dataset_from_jsonl_list_and_datasets(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in triplet_rows(5)) + "\n")
    assert len(TripletDataset.from_any(path)) == 5
    assert len(TripletDataset.from_any(str(path), limit=2)) == 2
    assert TripletDataset.from_any(triplet_rows(3))[0]["negatives"] == ["a text on the car number 0"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{not json}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        TripletDataset.from_any(bad)
    with pytest.raises(ValueError, match="row 1 is missing positive"):
        TripletDataset([{"query": "a", "positive": "b"}, {"query": "c"}])
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_list(triplet_rows(4))
    assert len(TripletDataset.from_any(hf)) == 4


# ----------------------------------------------------------------------------- Trainer


def test_plain_trainer_trains_evaluates_and_the_loss_falls(model, tokenizer, tmp_path):
    data = TripletDataset(triplet_rows(8))
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=12, eval_strategy="steps", eval_steps=6,
                                             gradient_accumulation_steps=2, per_device_eval_batch_size=4),
                      train_dataset=data, eval_dataset=data,
                      data_collator=ContrastiveDataCollator(tokenizer, model.config))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.5 * before, (before, after)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12


def test_resume_from_checkpoint_matches_uninterrupted_run(tokenizer, tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                control.should_training_stop = True

    data = TripletDataset(triplet_rows(16))

    def trainer_for(out, callbacks=()):
        model = tiny_model("llama", "bidirectional", "latent_attention", seed=1)
        model.tokenizer = tokenizer
        return Trainer(model=model, args=args(tmp_path, output_dir=str(out), max_steps=8, save_strategy="steps",
                                              save_steps=4, num_train_epochs=1),
                       train_dataset=data, data_collator=ContrastiveDataCollator(tokenizer, model.config),
                       callbacks=list(callbacks))

    full = trainer_for(tmp_path / "full")
    full.train()
    interrupted = trainer_for(tmp_path / "resumed", [StopAt(4)])
    interrupted.train()
    assert interrupted.state.global_step == 4 and (tmp_path / "resumed" / "checkpoint-4").is_dir()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert resumed.state.global_step == 8
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_checkpoint_folder_loads_through_automodel(model, tokenizer, tmp_path):
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                      train_dataset=TripletDataset(triplet_rows(8)),
                      data_collator=ContrastiveDataCollator(tokenizer, model.config), processing_class=tokenizer)
    trainer.train()
    loaded = AutoModel.from_pretrained(tmp_path / "out" / "checkpoint-2")
    np.testing.assert_allclose(loaded.encode(["a b c"]), model.encode(["a b c"]), atol=1e-6)


def test_entry_point_trains_and_saves(tiny_backbone_dir, tmp_path):
    from llm_embed.train import main

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in triplet_rows(12)) + "\n")
    out = main(["--backbone", str(tiny_backbone_dir), "--train_file", str(data), "--output_dir", str(tmp_path / "m"),
                "--pooling", "multi_layer", "--max_steps", "3", "--per_device_train_batch_size", "4",
                "--report_to", "none", "--use_cpu", "--max_seq_length", "32", "--loss_mini_batch_size", "2"])
    model = AutoModel.from_pretrained(out)
    assert model.config.pooling == "multi_layer" and model.config.loss_mini_batch_size == 2
    assert model.encode(["hello"]).shape == (1, 32)


def test_entry_point_rejects_unknown_arguments(tmp_path):
    from llm_embed.train import main

    with pytest.raises(ValueError, match="--not_an_option"):
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), "--not_an_option", "1"])


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_train_save_reload_merge(tiny_backbone_dir, tmp_path, checkpointing):
    pytest.importorskip("peft")
    from llm_embed.lora import apply_lora, load_lora, merge_lora

    build = lambda: LLMEmbeddingModel.from_backbone(tiny_backbone_dir, attention="bidirectional",
                                                    pooling="latent_attention")
    torch.manual_seed(0)
    base = build()
    backbone_before = {n: p.clone() for n, p in base.backbone.named_parameters()}
    peft_model = apply_lora(base, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("pooler" in n for n in trainable)
    assert not any("embed_tokens" in n or ("backbone" in n and "lora" not in n) for n in trainable)
    trainer = Trainer(model=peft_model, args=args(tmp_path, max_steps=4, learning_rate=5e-3,
                                                  gradient_checkpointing=checkpointing),
                      train_dataset=TripletDataset(triplet_rows(8)),
                      data_collator=ContrastiveDataCollator(base.tokenizer, base.config))
    trainer.train()
    peft_model.eval()
    texts = ["what about the cat?", "a text on the moon"]
    trained = peft_model.encode(texts)
    # backbone base weights untouched; adapters and head trained
    for name, param in base.backbone.named_parameters():
        if "lora" not in name and "base_layer" not in name and name in backbone_before:
            assert torch.equal(param, backbone_before[name]), name

    peft_model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(99)  # a different random head: the saved head must replace it
    reloaded = load_lora(build(), str(tmp_path / "adapter")).eval()
    np.testing.assert_allclose(reloaded.encode(texts), trained, atol=1e-6)

    merged = merge_lora(reloaded)
    assert type(merged) is LLMEmbeddingModel
    merged.save_pretrained(tmp_path / "merged")
    from_disk = AutoModel.from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(from_disk.encode(texts), trained, atol=1e-5)
