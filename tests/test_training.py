"""Collator, plain transformers.Trainer, resume, entry point, LoRA."""

import json
import shutil
from pathlib import Path

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


def test_collator_follows_config_changes_made_after_it_was_built(model):
    """A config change after the collator was built (append_eos off, a shorter max_seq_length, another
    padding side, a new prompt) reaches the training batches exactly as it reaches encode: the
    collator's tokenizer used to keep appending EOS, and its prompts were fixed at construction."""
    collator = ContrastiveDataCollator(model.tokenizer, model.config)
    rows = [{"query": "how do I reset my card", "positive": "reset it in the app " * 3}]
    model.config.append_eos = False
    model.config.max_seq_length = 6
    model.config.padding_side = "right"
    model.config.prompts = {"query": "Find: ", "document": ""}
    with pytest.warns(UserWarning, match="truncated"):
        batch = collator(rows)
    expected = model.tokenizer("Find: how do I reset my card")["input_ids"][:6]
    assert batch["query_input_ids"][0].tolist() == expected and expected[-1] != model.tokenizer.eos_token_id
    assert batch["document_attention_mask"][0].tolist() == [1] * 6
    assert collator.tokenizer("a")["input_ids"] == model.tokenizer("a")["input_ids"]
    assert collator.tokenizer.padding_side == "right" and collator.tokenizer.model_max_length == 6


def test_collator_configures_the_backbone_tokenizer_like_the_model(model, tokenizer):
    """Given the backbone's own tokenizer (no pad token, no EOS post-processor), the collator makes the
    batches the model's configured tokenizer makes, and leaves the caller's tokenizer unchanged."""
    rows = triplet_rows(3, negatives=1)
    pad, processor = tokenizer.pad_token, tokenizer.backend_tokenizer.post_processor.__getstate__()
    ours = ContrastiveDataCollator(tokenizer, model.config)(rows)
    models = ContrastiveDataCollator(model.tokenizer, model.config)(rows)
    assert all(torch.equal(ours[key], models[key]) for key in models)
    assert tokenizer.pad_token == pad and tokenizer.backend_tokenizer.post_processor.__getstate__() == processor


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


def test_from_any_limits_every_kind_and_names_the_data():
    """``limit`` was ignored for a TripletDataset, an empty evaluation list was called training data,
    and a DataFrame gave a raw KeyError (``data[0]`` is a column)."""
    rows = triplet_rows(10)
    dataset = TripletDataset.from_any(rows)
    assert len(TripletDataset.from_any(dataset, limit=3)) == 3 and len(dataset) == 10
    assert TripletDataset.from_any(dataset, limit=3).rows == dataset.rows[:3]
    with pytest.raises(ValueError, match="^evaluation data holds no rows"):
        TripletDataset.from_any([], what="evaluation data")
    with pytest.raises(TypeError, match="^evaluation data is a mapping"):
        TripletDataset.from_any({"train": rows}, what="evaluation data")
    with pytest.raises(ValueError, match="row limit 0"):
        TripletDataset.from_any(dataset, limit=0)
    pandas = pytest.importorskip("pandas")
    frame = TripletDataset.from_any(pandas.DataFrame(rows), limit=4)
    assert frame.rows == TripletDataset.from_any(rows[:4]).rows


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


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_resume_from_checkpoint_matches_uninterrupted_run(tokenizer, tmp_path, arch):
    """The plain Trainer for a dense backbone; EmbeddingTrainer for a mixture of experts, whose experts the
    plain Trainer's resume left at their base values (transformers issue 48805): they are saved in
    another layout than the model holds, and its raw load only warned of the missing keys."""
    from transformers import TrainerCallback

    from llm_embed.optimization import EmbeddingTrainer

    trainer_class = Trainer if arch == "llama" else EmbeddingTrainer

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                control.should_training_stop = True

    data = TripletDataset(triplet_rows(16))

    def trainer_for(out, callbacks=()):
        model = tiny_model(arch, "bidirectional", "latent_attention", seed=1)
        model.tokenizer = tokenizer
        return trainer_class(model=model, args=args(tmp_path, output_dir=str(out), max_steps=8, save_strategy="steps",
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


def test_entry_point_rejects_unknown_arguments(tmp_path, capsys):
    """A usage error (exit status 2, as argparse's own), not a ValueError (exit status 1)."""
    from llm_embed.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), "--not_an_option", "1"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --not_an_option 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- LoRA


def test_lora_targets_leave_out_linear_subclasses_with_a_forward_of_their_own():
    """Llama 4's router subclasses nn.Linear and returns a tuple: peft's LoRA layer on it failed at the first
    forward ("'tuple' object has no attribute 'dtype'")."""
    from transformers import Llama4TextConfig

    from llm_embed import LLMEmbeddingConfig
    from llm_embed.lora import default_lora_targets

    backbone = Llama4TextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                vocab_size=1000, num_hidden_layers=2, head_dim=8, intermediate_size_mlp=64,
                                num_local_experts=2, attention_chunk_size=4)
    model = LLMEmbeddingModel(LLMEmbeddingConfig(backbone_config=backbone, attention="causal", pooling="mean"))
    targets = default_lora_targets(model)
    assert "router" not in targets and "q_proj" in targets, targets


def test_lora_adapts_the_fused_experts_of_a_mixture_of_experts(tokenizer, tmp_path):
    """Mixtral's experts are 3-D parameters, not linear layers: LoRA adapted attention only and the
    whole MLP stayed untrained, without a word (before). Trained adapters on them save, reload and merge."""
    pytest.importorskip("peft")
    from llm_embed.lora import apply_lora, default_lora_target_parameters, load_lora, merge_lora

    def build():
        model = tiny_model("mixtral", "bidirectional", "mean", seed=0)
        model.tokenizer = tokenizer
        return model

    base = build()
    assert default_lora_target_parameters(base) == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    peft_model = apply_lora(base, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("experts" in n and "lora_A" in n for n in trainable), trainable
    batch = ContrastiveDataCollator(tokenizer, base.config)(triplet_rows(4))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    peft_model.eval()
    texts = ["what about the cat?", "a text on the moon"]
    trained = peft_model.encode(texts)
    assert not np.allclose(trained, build().encode(texts), atol=1e-4)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = load_lora(build(), str(tmp_path / "adapter")).eval()
    np.testing.assert_allclose(reloaded.encode(texts), trained, atol=1e-6)
    np.testing.assert_allclose(merge_lora(reloaded).encode(texts), trained, atol=1e-5)
    try:  # the CLI's default dropout: peft's error named its ParamWrapper class, not the option to change
        apply_lora(build(), r=4, alpha=8, dropout=0.1)
    except ValueError as error:  # this peft cannot (0.21): the refusal names the option
        assert "pass --lora_dropout 0" in str(error) and "mlp.experts.gate_up_proj" in str(error)


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
    if checkpointing:
        return
    # a base of another design: peft dropped the trained head without a word (mean) or raised a raw
    # KeyError (multi_layer); a head of other sizes too
    for pooling, extra in (("mean", {}), ("multi_layer", {}), ("latent_attention", {"num_latents": 3})):
        other = LLMEmbeddingModel.from_backbone(tiny_backbone_dir, attention="bidirectional", pooling=pooling, **extra)
        with pytest.raises(ValueError, match=f"trained with another head than this model's \\(pooling='{pooling}'\\)"):
            load_lora(other, str(tmp_path / "adapter"))


# ----------------------------------------------------------------------------- llm-embed-train's checks


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train_args(backbone, tmp_path, *more):
    return ["--backbone", str(backbone), "--output_dir", str(tmp_path / "m"), "--pooling", "mean",
            "--max_seq_length", "32", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", *more]


@pytest.mark.parametrize("which", ["train", "eval"])
def test_a_batch_of_one_query_without_negatives_is_refused_before_training(tiny_backbone_dir, tmp_path, which):
    """5 rows without negatives in batches of 4 leave a last batch of one query, which the loss cannot
    score: refused before the backbone loads (it used to fail at the last step or the final
    evaluation, with nothing saved), naming the three fixes."""
    from llm_embed.train import main

    good = write_jsonl(tmp_path / "good.jsonl", triplet_rows(8))
    noneg = write_jsonl(tmp_path / "noneg.jsonl", triplet_rows(5, negatives=0))
    files = (["--train_file", noneg] if which == "train" else ["--train_file", good, "--eval_file", noneg])
    batch = f"--per_device_{which}_batch_size"
    message = (f"the {which}[a-z]* data has no hard negatives and the last batch .*5 rows in batches of 4.*"
               f"add negatives.*change {batch}.*--dataloader_drop_last")
    with pytest.raises(ValueError, match=message):
        main(train_args(tiny_backbone_dir, tmp_path, *files, "--max_steps", "1", batch, "4"))
    assert not (tmp_path / "m").exists()


def test_check_batches_contrast_cases():
    from llm_embed.train import check_batches_contrast

    noneg, withneg = TripletDataset(triplet_rows(5, negatives=0)), TripletDataset(triplet_rows(5))
    check_batches_contrast(noneg, 4, 1, True, "training", "--b")   # the short last batch is dropped
    check_batches_contrast(noneg, 3, 1, False, "training", "--b")  # 3 + 2
    check_batches_contrast(withneg, 4, 1, False, "training", "--b")  # the negative is a second candidate
    check_batches_contrast(noneg, 1, 2, True, "training", "--b")   # two processes' queries are gathered
    with pytest.raises(ValueError, match="every batch would hold a single query"):
        check_batches_contrast(noneg, 1, 1, True, "training", "--b")
    with pytest.raises(ValueError, match="last batch"):
        check_batches_contrast(TripletDataset(triplet_rows(1, negatives=0)), 4, 1, False, "evaluation", "--b")


def test_the_model_is_saved_before_the_final_evaluation(tiny_backbone_dir, tmp_path, monkeypatch):
    """An evaluation that fails after training must not lose the trained model."""
    from llm_embed import train

    def failing_evaluate(self, *args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(train.EmbeddingTrainer, "evaluate", failing_evaluate)
    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train.main(train_args(tiny_backbone_dir, tmp_path, "--train_file", data, "--eval_file", data,
                              "--max_steps", "1", "--per_device_train_batch_size", "2"))
    assert AutoModel.from_pretrained(tmp_path / "m").config.pooling == "mean"


@pytest.mark.parametrize("args, given", [
    (["--save_steps", "5"], True), (["--save-steps", "5"], True), (["--save-strategy=steps"], True),
    (["--save_strategy=no"], True), (["--save_strat", "no"], True), (["--save_total_limit", "2"], False),
    (["--logging_steps", "5"], False), (["--output_dir", "save_steps"], False),
])
def test_save_options_are_found_in_every_spelling(args, given):
    from llm_embed.train import gives_save_option

    assert gives_save_option(args) is given


def test_dashed_save_options_are_not_overridden(tiny_backbone_dir, tmp_path):
    """``--save-strategy steps --save-steps 1`` (the spelling --help lists) used to be overridden by
    the forced ``--save_strategy no``: no checkpoint was written."""
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    main(train_args(tiny_backbone_dir, tmp_path, "--train_file", data, "--max_steps", "1",
                    "--per_device_train_batch_size", "2", "--save-strategy", "steps", "--save-steps", "1"))
    assert (tmp_path / "m" / "checkpoint-1").is_dir()


@pytest.mark.parametrize("option", ["--max_train_rows", "--max_eval_rows"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_row_limits_below_one_are_usage_errors(tmp_path, capsys, option, value):
    from llm_embed.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    assert f"expected at least 1 row, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("args, unused", [
    (["--pooling", "mean", "--pooling_layers", "1", "2"], "--pooling_layers"),
    (["--pooling", "last_token", "--num_latents", "7"], "--num_latents"),
    (["--pooling", "latent_attention", "--pooling_layers", "1"], "--pooling_layers"),
])
def test_head_options_the_head_does_not_use_are_refused(tmp_path, args, unused):
    from llm_embed.train import main

    with pytest.raises(ValueError, match=f"{unused}: not used by the {args[1]} pooling head"):
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), *args])


def test_layer_reduction_without_the_residual_is_refused_for_latent_attention(tmp_path):
    """latent_attention reads layer_reduction only for its pooling_residual baseline: without the
    residual the value would be saved in the config and change nothing."""
    from llm_embed.cli import check_head_options
    from llm_embed.train import main

    with pytest.raises(ValueError, match="--layer_reduction: the latent_attention pooling head reads it only with "
                                         "--pooling_residual true"):
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), "--pooling", "latent_attention",
              "--layer_reduction", "mean"])
    check_head_options({"pooling": "latent_attention", "layer_reduction": "mean", "pooling_residual": True},
                       dashes=True)
    check_head_options({"pooling": "multi_layer", "layer_reduction": "mean"}, dashes=True)


@pytest.mark.parametrize("rows, batch_option", [(3, "--per_device_train_batch_size"),
                                                 (8, "--per_device_eval_batch_size")])
def test_drop_last_that_would_drop_every_batch_is_refused(tmp_path, rows, batch_option):
    """3 rows in batches of 4 with --dataloader_drop_last ran 0 steps and saved the untrained model with
    exit 0 (and an eval set smaller than its batch gave no eval loss)."""
    from llm_embed.train import main

    train = write_jsonl(tmp_path / "train.jsonl", triplet_rows(rows))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", triplet_rows(8))
    what = "training" if "train" in batch_option else "evaluation"
    with pytest.raises(ValueError, match=f"--dataloader_drop_last would drop every {what} batch: the {what} data has "
                                         f"{rows if what == 'training' else 8} rows"):
        main(["--train_file", train, "--eval_file", evaluation, "--output_dir", str(tmp_path / "m"),
              "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16", "--dataloader_drop_last"])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("form", ["argv", "file"])
def test_lora_sizes_without_lora_are_refused(tmp_path, form):
    """--lora_r 8 without --lora fine-tuned every weight and ignored the size without a word."""
    from llm_embed.train import main

    values = {"train_file": "x.jsonl", "output_dir": str(tmp_path), "lora_r": 8, "lora_dropout": 0.2}
    if form == "file":
        (tmp_path / "args.json").write_text(json.dumps(values))
        argv = [str(tmp_path / "args.json")]
    else:
        argv = ["--train_file", "x.jsonl", "--output_dir", str(tmp_path), "--lora-r=8", "--lora_dropout", "0.2"]
    with pytest.raises(ValueError, match="--lora_r --lora_dropout given without --lora"):
        main(argv)


def test_a_missing_eval_file_is_called_evaluation_data(tmp_path):
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    with pytest.raises(FileNotFoundError, match="^evaluation data .*nope.jsonl does not exist"):
        main(["--train_file", data, "--eval_file", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "m")])


def test_lora_run_saves_then_evaluates_with_the_eval_loss_in_the_state(tiny_backbone_dir, tmp_path):
    """The final evaluation now runs after the save (which merges the adapters): it must still run,
    and trainer_state.json, written again after it, holds its loss."""
    pytest.importorskip("peft")
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    out = main(train_args(tiny_backbone_dir, tmp_path, "--lora", "--lora_r", "2", "--train_file", data,
                          "--eval_file", data, "--max_steps", "1", "--per_device_train_batch_size", "2"))
    history = json.loads((tmp_path / "m" / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in entry for entry in history)
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").is_file()
    assert AutoModel.from_pretrained(out).config.pooling == "mean"


# ----------------------------------------------------------------------------- resuming a run


def test_resume_refuses_another_design_and_keeps_the_checkpoint_cadence(tiny_backbone_dir, tmp_path):
    """A resumed run built another way than its checkpoint failed with raw optimizer / index errors,
    or silently trained a bidirectional checkpoint on as causal; and, with no save option repeated, it
    wrote no checkpoint. Now each difference is named before a step, old checkpoints (without the run
    file) are checked on their config.json, and the resumed run saves as the first one did."""
    from llm_embed.resume import RUN_FILE
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(8))
    common = ["--train_file", data, "--per_device_train_batch_size", "2"]
    main(train_args(tiny_backbone_dir, tmp_path, *common, "--max_steps", "2", "--save_steps", "1"))
    checkpoint = tmp_path / "m" / "checkpoint-1"
    record = json.loads((checkpoint / RUN_FILE).read_text())
    assert record["design"]["attention"] == "bidirectional" and record["save_steps"] == 1
    resumed = lambda *more: main(["--backbone", str(tiny_backbone_dir), "--output_dir", str(tmp_path / "r"),
                                  "--max_seq_length", "32", "--report_to", "none", "--use_cpu", "--disable_tqdm",
                                  "true", *common, "--max_steps", "4", "--resume_from_checkpoint", str(checkpoint),
                                  *more])
    with pytest.raises(ValueError, match=r'--pooling "mean" \(this run: "multi_layer"\)'):
        resumed()
    with pytest.raises(ValueError, match=r'--attention "bidirectional" \(this run: "causal"\)\. Resuming'):
        resumed("--pooling", "mean", "--attention", "causal")  # not also layer_reduction, which mean never reads
    with pytest.raises(ValueError, match=r"--head_learning_rate not set \(this run: 0.01\)"):
        resumed("--pooling", "mean", "--output_dim", "8", "--head_learning_rate", "1e-2")
    # the prompts the rows were trained with: another one changes every loss value (was accepted)
    with pytest.raises(ValueError, match=r"--query_prompt_name query \(this run: none\); --document_prompt_name "
                                         r"document \(this run: none\)\. Resuming"):
        resumed("--pooling", "mean", "--query_prompt_name", "none", "--document_prompt_name", "none")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="is not a Trainer checkpoint: .* \\(it holds checkpoint-1, checkpoint-2\\)"):
        main(["--backbone", str(tiny_backbone_dir), "--output_dir", str(tmp_path / "r"), "--max_seq_length", "32",
              "--report_to", "none", "--use_cpu", *common, "--max_steps", "4", "--pooling", "mean",
              "--resume_from_checkpoint", str(tmp_path / "m")])
    (checkpoint / RUN_FILE).rename(tmp_path / "kept.json")  # a checkpoint of an older llm_embed
    with pytest.raises(ValueError, match=r'--attention "bidirectional" \(this run: "causal"\)'):
        resumed("--pooling", "mean", "--attention", "causal")
    (tmp_path / "kept.json").rename(checkpoint / RUN_FILE)
    # a backbone of the same shapes that computes otherwise (was only compared on its shapes)
    other = tmp_path / "other-backbone"
    shutil.copytree(tiny_backbone_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))
    with pytest.raises(ValueError, match=r"a backbone with rms_norm_eps 1e-0?6 \(this run: 0.5\)"):
        main(["--backbone", str(other), "--output_dir", str(tmp_path / "r"), "--max_seq_length", "32",
              "--report_to", "none", "--use_cpu", *common, "--max_steps", "4", "--pooling", "mean",
              "--resume_from_checkpoint", str(checkpoint)])
    resumed("--pooling", "mean", "--loss_mini_batch_size", "1")  # GradCache's size may change
    assert sorted(p.name for p in (tmp_path / "r").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3",
                                                                             "checkpoint-4"]
    assert json.loads((tmp_path / "r" / "trainer_state.json").read_text())["global_step"] == 4


def test_resume_of_a_lora_run_and_its_adapters_record_their_design(tiny_backbone_dir, tmp_path):
    """LoRA checkpoints and the ``adapter/`` folder hold adapters only; they now record the base
    (``llm_embed_base.json``): a run without ``--lora`` may not resume them, ``load_lora`` refuses a
    base of another attention mode, llm-embed-evaluate rebuilds the base, and peft's
    ``base_model_name_or_path`` names the decoder."""
    pytest.importorskip("peft")
    from llm_embed.evaluation.runner import load_model
    from llm_embed.lora import LORA_BASE_FILE, load_lora
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(8))
    out = main(train_args(tiny_backbone_dir, tmp_path, "--train_file", data, "--per_device_train_batch_size", "2",
                          "--max_steps", "2", "--save_steps", "1", "--lora", "--lora_r", "2", "--lora_alpha", "4",
                          "--pooling", "latent_attention"))
    checkpoint, adapter = tmp_path / "m" / "checkpoint-1", tmp_path / "m" / "adapter"
    assert (checkpoint / LORA_BASE_FILE).is_file() and (adapter / LORA_BASE_FILE).is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_backbone_dir)
    other = tmp_path / "other-decoder"  # the same shape, other weights
    torch.manual_seed(1)
    AutoModel.from_config(AutoModel.from_pretrained(tiny_backbone_dir).config).save_pretrained(other)
    shutil.copy(tiny_backbone_dir / "tokenizer.json", other / "tokenizer.json")
    shutil.copy(tiny_backbone_dir / "tokenizer_config.json", other / "tokenizer_config.json")
    with pytest.raises(ValueError, match="LoRA adapters on a backbone with other weights"):
        main(train_args(other, tmp_path / "o", "--train_file", data, "--per_device_train_batch_size", "2",
                        "--max_steps", "3", "--lora", "--lora_r", "2", "--lora_alpha", "4", "--pooling",
                        "latent_attention", "--resume_from_checkpoint", str(checkpoint)))
    with pytest.raises(ValueError, match=r"--lora_alpha 4 --lora_dropout 0.1 \(this run: no --lora\)"):
        main(train_args(tiny_backbone_dir, tmp_path / "r", "--train_file", data, "--per_device_train_batch_size", "2",
                        "--max_steps", "3", "--pooling", "latent_attention", "--resume_from_checkpoint",
                        str(checkpoint)))
    causal = LLMEmbeddingModel.from_backbone(tiny_backbone_dir, attention="causal", pooling="latent_attention",
                                             max_seq_length=32)
    with pytest.raises(ValueError, match="trained on another design \\(attention='bidirectional' there, 'causal'"):
        load_lora(causal, str(adapter))
    texts = ["what about the cat?", "a text on the moon"]
    np.testing.assert_allclose(load_model(adapter).encode(texts), AutoModel.from_pretrained(out).encode(texts),
                               atol=1e-5)
    # on another decoder of the same shapes the adapters loaded and gave other vectors (0.68 off), silently
    assert json.loads((adapter / LORA_BASE_FILE).read_text())["base_weights"]["dtype"] == "float32"
    with pytest.raises(ValueError, match="trained on other base weights than this model's backbone"):
        load_lora(LLMEmbeddingModel.from_backbone(other, pooling="latent_attention", max_seq_length=32), str(adapter))
    with pytest.raises(ValueError, match="trained on other base weights"):
        load_model(adapter, backbone=str(other))
    moved = tmp_path / "moved-decoder"  # the same weights elsewhere, and in another dtype: accepted
    shutil.copytree(tiny_backbone_dir, moved)
    np.testing.assert_allclose(load_model(adapter, backbone=str(moved)).encode(texts),
                               load_model(adapter).encode(texts), atol=1e-6)
    bf16 = LLMEmbeddingModel.from_backbone(tiny_backbone_dir, pooling="latent_attention", max_seq_length=32,
                                           dtype=torch.bfloat16)
    assert load_lora(bf16, str(adapter)) is not None
    with pytest.raises(OSError, match="holds LoRA adapters .*load_lora.*llm-embed-evaluate"):  # said: from_backbone
        LLMEmbeddingModel.from_pretrained(adapter)


def test_load_best_model_without_a_save_option_is_refused_by_name(tmp_path):
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    with pytest.raises(ValueError, match="--load_best_model_at_end chooses among checkpoints"):
        main(["--train_file", data, "--eval_file", data, "--output_dir", str(tmp_path / "m"), "--eval_strategy",
              "steps", "--load_best_model_at_end"])


def test_numbers_written_as_yaml_text_are_numbers(tiny_backbone_dir, tmp_path):
    """YAML 1.1 reads ``1e-3`` as text: the run crashed inside AdamW without naming the option."""
    pytest.importorskip("yaml")
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    lines = [f"backbone: {tiny_backbone_dir}", f"train_file: {data}", f"output_dir: {tmp_path / 'm'}",
             "max_steps: 1", "per_device_train_batch_size: 2", "max_seq_length: 32", "report_to: none",
             "pooling: mean", "use_cpu: true", "learning_rate: 1e-3", "loss_temperature: 5e-2"]
    (tmp_path / "args.yaml").write_text("\n".join(lines) + "\n")
    assert AutoModel.from_pretrained(main([str(tmp_path / "args.yaml")])).config.loss_temperature == 0.05
    (tmp_path / "args.yaml").write_text("\n".join(lines[:-2] + ["learning_rate: fast"]) + "\n")
    with pytest.raises(ValueError, match="args.yaml: learning_rate: 'fast' is not a number"):
        main([str(tmp_path / "args.yaml")])


def test_arguments_files_read_text_booleans_and_name_bad_files(tmp_path, capsys):
    """``"lora": "false"`` (a non-empty string) trained LoRA; a malformed YAML file gave a traceback;
    a file followed by options dropped the file."""
    from llm_embed.train import build_parser, coerce_values, main

    values = {"train_file": "x.jsonl", "output_dir": "o", "lora": "false", "gradient_checkpointing": "No",
              "normalize": "true", "max_steps": "3"}
    coerced = coerce_values(values, "args.json")
    assert (coerced["lora"], coerced["gradient_checkpointing"], coerced["normalize"], coerced["max_steps"]) == (
        False, False, True, 3)
    model_args, _, training_args = build_parser().parse_dict({k: v for k, v in coerced.items() if k != "normalize"})
    assert model_args.lora is False and training_args.gradient_checkpointing is False
    (tmp_path / "maybe.json").write_text(json.dumps({**values, "lora": "maybe"}))
    with pytest.raises(ValueError, match="maybe.json: lora: 'maybe' is not a boolean; write true or false"):
        main([str(tmp_path / "maybe.json")])
    (tmp_path / "bad.yaml").write_text("train_file: x.jsonl\nlora: [true\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML: while parsing"):
        main([str(tmp_path / "bad.yaml")])
    (tmp_path / "bad.json").write_text('{"train_file": "x.jsonl",}')
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        main([str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.json"), "--max_steps", "3"])
    assert "is an arguments file, which holds every option: put --max_steps 3 into it" in capsys.readouterr().err


def test_options_that_cannot_apply_are_refused_and_load_best_false_is_not(tmp_path):
    from llm_embed.train import main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    common = ["--train_file", data, "--output_dir", str(tmp_path / "m")]
    with pytest.raises(ValueError, match="--max_eval_rows limits the rows of --eval_file, which was not given"):
        main([*common, "--max_eval_rows", "3"])
    # --load_best_model_at_end False passes the check (the run then stops at the missing backbone folder)
    with pytest.raises(FileNotFoundError, match="the folder .*moved-decoder does not exist"):
        main([*common, "--backbone", str(tmp_path / "moved-decoder"), "--load_best_model_at_end", "False"])


def test_query_prompt_name_is_checked_first_named_and_can_be_none(tmp_path, model, tokenizer):
    """An unknown name failed after the backbone loaded with an error about ``encode()``; "no prompt"
    could not be said on the command line."""
    from llm_embed.train import build_parser, main

    data = write_jsonl(tmp_path / "rows.jsonl", triplet_rows(4))
    with pytest.raises(ValueError, match=r"query_prompt_name 'qeury' \(--query_prompt_name of llm-embed-train\) is "
                                         r"not one of the model's prompts \['document', 'query'\]"):
        main(["--backbone", str(tmp_path / "not-loaded"), "--train_file", data, "--output_dir", str(tmp_path / "m"),
              "--query_prompt_name", "qeury"])
    with pytest.raises(ValueError, match=r"document_prompt_name 'passage' .* \['doc'\]"):
        main(["--train_file", data, "--output_dir", str(tmp_path / "m"), "--prompts", '{"doc": "d: "}',
              "--query_prompt_name", "none", "--document_prompt_name", "passage"])
    for spelled in ("none", "None", ""):
        _, data_args, *_ = build_parser().parse_args_into_dataclasses(
            ["--train_file", data, "--output_dir", "o", "--query_prompt_name", spelled])
        assert data_args.query_prompt_name is None and data_args.document_prompt_name == "document"
    with pytest.raises(ValueError, match="query_prompt_name 'x' .*none \\(None in Python\\) for no prompt"):
        ContrastiveDataCollator(tokenizer, model.config, query_prompt_name="x")


@pytest.mark.parametrize("sizes, message", [(["--lora_alpha", "-3"], "alpha .* must be above 0, got -3"),
                                            (["--lora_r", "0"], "rank r .* at least 1, got 0"),
                                            (["--lora_dropout", "1.5"], r"dropout .* in \[0, 1\), got 1.5")])
def test_lora_sizes_peft_would_take_are_refused_before_loading(tmp_path, sizes, message):
    from llm_embed.study import parse_args
    from llm_embed.train import main

    with pytest.raises(ValueError, match=message):
        main(["--backbone", str(tmp_path / "not-loaded"), "--train_file", "x.jsonl", "--output_dir", str(tmp_path),
              "--lora", *sizes])
    with pytest.raises(SystemExit):
        parse_args([sizes[0].replace("_", "-"), sizes[1]])


@pytest.mark.parametrize("option", ["--deepspeed", "--fsdp"])
def test_sharding_options_outside_a_launcher_are_refused_before_loading(tmp_path, monkeypatch, option):
    """In a plain process --deepspeed failed with "No module named 'mpi4py'" and --fsdp with "fsdp only works
    in distributed training", after the backbone had loaded (before)."""
    from llm_embed.train import main

    if option == "--deepspeed":
        pytest.importorskip("deepspeed")
        value = str(Path(__file__).parent.parent / "examples" / "configs" / "deepspeed_zero2.json")
    else:
        value = "full_shard auto_wrap"
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=f"{option} runs under a distributed launcher.*torchrun --standalone"):
        main(["--train_file", "x.jsonl", "--output_dir", str(tmp_path), option, value])


def test_training_with_another_prompt_than_inference_is_said(caplog):
    """``--query_prompt_name none`` trained unprompted queries while the saved model's ``encode_query`` kept
    prepending the default instruction, without a word."""
    from llm_embed.configuration_llm_embed import DEFAULT_PROMPTS
    from llm_embed.train import warn_of_other_prompts_at_inference

    with caplog.at_level("WARNING", logger="llm_embed.train"):
        warn_of_other_prompts_at_inference(DEFAULT_PROMPTS, "query", "document")
        warn_of_other_prompts_at_inference({"query": "q: "}, "query", None)  # no document prompt either way
    assert caplog.text == ""
    with caplog.at_level("WARNING", logger="llm_embed.train"):
        warn_of_other_prompts_at_inference(DEFAULT_PROMPTS, None, "document")
    assert "query texts train with the prompt '' (--query_prompt_name none) but the saved model's encode_query " \
           "prepends 'Instruct: Given a web search query" in caplog.text
    assert "document" not in caplog.text.split("encode_query")[0]
