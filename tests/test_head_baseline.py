"""Trainable heads that start at their baseline (``pooling_residual``), the paper's head kept reachable,
checkpoints saved before the option existed loading unchanged, and the head's own learning rate
(``head_learning_rate`` through optimizer parameter groups)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainingArguments

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel
from llm_embed.optimization import EmbeddingTrainer, is_head_parameter, set_head_learning_rate
from llm_embed.pooling import last_token, masked_mean

from .conftest import ARCHS, ATTENTIONS, tiny_model

TRAINABLE = ["latent_attention", "multi_layer"]
REDUCTIONS = {"mean": masked_mean, "last_token": last_token}


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    return ids, mask


def hand_baseline(model, ids, mask) -> torch.Tensor:
    """The baseline computed from the backbone's hidden states, without the head's code."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        states = model.backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                                output_hidden_states=True).hidden_states
    reduce = REDUCTIONS[model.config.layer_reduction]
    rms = lambda v: v / v.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    if model.config.pooling == "latent_attention":
        return rms(reduce(states[-1], mask))
    return torch.stack([rms(reduce(layer, mask)) for layer in states[1:]], dim=1).mean(dim=1)


@pytest.mark.parametrize("arch", ARCHS[:2])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", TRAINABLE)
def test_an_untrained_head_returns_its_baseline(arch, attention, pooling):
    model = tiny_model(arch, attention, pooling, pooling_residual=True)
    ids, mask = batch()
    with torch.no_grad():
        embeddings = model(ids, mask, normalize=False).embeddings
    torch.testing.assert_close(embeddings, hand_baseline(model, ids, mask), rtol=1e-4, atol=1e-5)


def test_latent_attention_starts_as_the_design_it_extends():
    """Causal latent_attention starts as last-token (EOS) pooling, bidirectional as mean pooling: the same
    normalised vectors as those designs on the same backbone weights."""
    for attention, plain in (("causal", "last_token"), ("bidirectional", "mean")):
        head = tiny_model("llama", attention, "latent_attention", seed=1, pooling_residual=True)
        reference = tiny_model("llama", attention, plain, seed=1)
        reference.backbone.load_state_dict(head.backbone.state_dict())
        ids, mask = batch(1)
        with torch.no_grad():
            torch.testing.assert_close(head(ids, mask).embeddings, reference(ids, mask).embeddings,
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", TRAINABLE)
def test_the_papers_head_is_the_default(pooling):
    model = tiny_model("llama", "bidirectional", pooling)
    assert model.config.pooling_residual is False
    ids, mask = batch()
    with torch.no_grad():
        embeddings = model(ids, mask, normalize=False).embeddings
    baseline = hand_baseline(model, ids, mask)
    # a random projection, far from the baseline's direction
    assert F.cosine_similarity(embeddings, baseline, dim=-1).abs().max() < 0.9
    assert model.pooler.cross_attention.to_out.weight.abs().sum() > 0


@pytest.mark.parametrize("pooling", TRAINABLE)
def test_every_head_parameter_trains_from_the_second_step(pooling):
    """Zero-initialised output projections get gradients at once (their inputs are not zero); after they
    have moved, the latents, queries and keys get gradients too: nothing is stuck at its start."""
    model = tiny_model("llama", "bidirectional", pooling, pooling_residual=True).train()
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if is_head_parameter(n)], lr=1e-2)
    queries, documents = batch(2), batch(3)
    grads = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = model(query_input_ids=queries[0], query_attention_mask=queries[1],
                     document_input_ids=documents[0], document_attention_mask=documents[1]).loss
        loss.backward()
        grads.append({n: p.grad.abs().sum().item() for n, p in model.pooler.named_parameters()})
        optimizer.step()
    assert grads[0]["cross_attention.to_out.weight"] > 0 and grads[0]["feed_forward.proj_out.weight"] > 0
    assert grads[0]["latents"] == 0  # behind the zeroed projection on the first step
    assert all(value > 0 for value in grads[1].values()), grads[1]


def test_a_checkpoint_saved_before_the_option_loads_as_the_papers_head(tmp_path):
    model = tiny_model("llama", "causal", "multi_layer", pooling_residual=False)
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, mask).embeddings
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["pooling_residual"] is False
    del saved["pooling_residual"]  # as a config.json written before the option existed
    config_file.write_text(json.dumps(saved))
    loaded = LLMEmbeddingModel.from_pretrained(tmp_path)
    assert loaded.config.pooling_residual is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).embeddings, before, rtol=0, atol=0)


def test_a_new_save_always_writes_the_option(tmp_path):
    """transformers leaves values equal to the default out of config.json; this one must be written,
    or the checkpoint would reload as the legacy head."""
    model = tiny_model("llama", "bidirectional", "latent_attention", pooling_residual=True)
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, mask).embeddings
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pooling_residual"] is True
    loaded = LLMEmbeddingModel.from_pretrained(tmp_path)
    assert loaded.config.pooling_residual is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).embeddings, before, rtol=0, atol=0)
    assert LLMEmbeddingConfig.from_dict(loaded.config.to_dict()).pooling_residual is True


# ----------------------------------------------------------------------------- head_learning_rate


def test_set_head_learning_rate_splits_every_group():
    model = tiny_model("llama", "bidirectional", "multi_layer", output_dim=8)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.8, 0.9))
    set_head_learning_rate(optimizer, model, 3e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        heads = {is_head_parameter(n) for n in group_names}
        assert len(heads) == 1, group_names  # no group mixes head and backbone
        assert group["lr"] == (3e-3 if heads == {True} else 1e-4)
        assert group["betas"] == (0.8, 0.9)
        seen += group_names
        if heads == {True}:
            assert {"pooler.latents", "projection.weight"} & set(group_names) or group["weight_decay"] == 0.0
    assert sorted(seen) == sorted(n for n, _ in model.named_parameters())  # every parameter once
    assert {g["weight_decay"] for g in optimizer.param_groups if is_head_parameter(names[id(g["params"][0])])} \
        == {0.1, 0.0}


def test_set_head_learning_rate_refuses_what_it_cannot_do():
    model = tiny_model("llama", "causal", "last_token")
    with pytest.raises(ValueError, match="no trainable parameter outside the backbone"):
        set_head_learning_rate(torch.optim.AdamW(model.parameters(), lr=1e-4), model, 1e-3)
    model = tiny_model("llama", "causal", "latent_attention")
    for bad in (0, -1e-3, float("nan"), "1e-3", True):
        with pytest.raises(ValueError, match="head_learning_rate must be a positive number"):
            set_head_learning_rate(torch.optim.AdamW(model.parameters(), lr=1e-4), model, bad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    assert set_head_learning_rate(optimizer, model, None) is optimizer and len(optimizer.param_groups) == 1


def contrastive_rows(n: int) -> list[dict]:
    return [{"query": f"question number {i}", "positive": f"answer number {i}", "negatives": [f"other {i}"]}
            for i in range(n)]


def test_embedding_trainer_schedules_the_head_rate_like_the_backbone_rate(tmp_path, tokenizer):
    from llm_embed.data import ContrastiveDataCollator, TripletDataset

    model = tiny_model("llama", "bidirectional", "latent_attention")
    model.tokenizer = tokenizer
    data = TripletDataset(contrastive_rows(8))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=1e-4, warmup_steps=2, lr_scheduler_type="linear", report_to=[],
                             save_strategy="no", remove_unused_columns=False, use_cpu=True, disable_tqdm=True,
                             logging_steps=1)
    rates = []

    class RecordRates(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            rates.append([group["lr"] for group in optimizer.param_groups])

    trainer = EmbeddingTrainer(model=model, args=args, train_dataset=data, head_learning_rate=1e-2,
                               data_collator=ContrastiveDataCollator(tokenizer, model.config),
                               callbacks=[RecordRates()])
    trainer.train()
    assert len(trainer.optimizer.param_groups) == 4  # (decay, no decay) x (backbone, then the head's)
    assert len(rates) == 4
    for step in rates:
        assert step[2:] == pytest.approx([100 * rate for rate in step[:2]])  # the schedule scales both alike
    assert [step[2] for step in rates] == pytest.approx([0, 0.5e-2, 1e-2, 0.5e-2])  # warm-up, then decay


def test_embedding_trainer_gives_the_head_rate_on_every_train_with_model_init(tmp_path, tokenizer):
    """With ``model_init`` the Trainer builds a new optimizer on each ``train()`` (every
    hyperparameter_search trial): only the first one got the head's groups, the later ones trained the
    head at the backbone's rate."""
    from llm_embed.data import ContrastiveDataCollator, TripletDataset

    def model_init(trial=None):
        model = tiny_model("llama", "bidirectional", "latent_attention")
        model.tokenizer = tokenizer
        return model

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                             learning_rate=1e-4, lr_scheduler_type="constant", report_to=[], save_strategy="no",
                             remove_unused_columns=False, use_cpu=True, disable_tqdm=True)
    trainer = EmbeddingTrainer(model_init=model_init, args=args, train_dataset=TripletDataset(contrastive_rows(4)),
                               head_learning_rate=1e-2,
                               data_collator=ContrastiveDataCollator(tokenizer, model_init().config))
    optimizers = []
    for _ in range(2):
        trainer.train()
        optimizers.append(trainer.optimizer)
        assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx([1e-4, 1e-4, 1e-2, 1e-2])
        head = {id(p) for group in trainer.optimizer.param_groups[2:] for p in group["params"]}
        assert head == {id(p) for n, p in trainer.model.named_parameters() if n.startswith("pooler.")}
    assert optimizers[0] is not optimizers[1]  # a new optimizer, regrouped too
    assert trainer.create_optimizer() is optimizers[1] and len(optimizers[1].param_groups) == 4  # not twice


def test_embedding_trainer_refuses_the_head_rate_with_a_scheduler_of_your_own(tmp_path):
    """The scheduler was built on the optimizer's old groups: the first ``scheduler.step()`` crashed."""
    from transformers import get_linear_schedule_with_warmup

    model = tiny_model("llama", "bidirectional", "latent_attention")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    with pytest.raises(ValueError, match=r"scheduler of your own.*optimizers=\(optimizer, None\)"):
        EmbeddingTrainer(model=model, args=args, head_learning_rate=1e-2,
                         optimizers=(optimizer, get_linear_schedule_with_warmup(optimizer, 2, 4)))
    trainer = EmbeddingTrainer(model=model, args=args, head_learning_rate=1e-2, optimizers=(optimizer, None))
    assert trainer.head_learning_rate == 1e-2


def test_the_entry_points_expose_head_learning_rate():
    from llm_embed.study import parse_args
    from llm_embed.train import build_parser

    assert parse_args(["--head-learning-rate", "1e-3"]).head_learning_rate == 1e-3
    assert parse_args([]).head_learning_rate is None
    with pytest.raises(SystemExit):
        parse_args(["--head-learning-rate", "0"])
    model_args, *_ = build_parser().parse_args_into_dataclasses(
        ["--train_file", "x.jsonl", "--output_dir", "out", "--head_learning_rate", "2e-3"])
    assert model_args.head_learning_rate == 2e-3


def test_llm_embed_train_refuses_a_bad_head_rate_before_loading_anything(tmp_path):
    from llm_embed.train import main

    with pytest.raises(ValueError, match="head_learning_rate must be a positive number"):
        main(["--train_file", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "out"),
              "--head_learning_rate", "-1"])


def test_llm_embed_train_refuses_a_head_rate_for_a_head_without_parameters_before_the_backbone_loads(tmp_path):
    """``--pooling mean --head_learning_rate`` (LoRA or not) was refused by the optimizer at the first step,
    after the backbone had loaded (minutes for a 7B model). The head is now built from the config alone: a
    backbone folder with a config and no weights is enough to refuse it, and a trainable head passes."""
    import json

    from llm_embed.train import build_parser, check_head_has_parameters, main

    from .conftest import tiny_backbone_config, triplet_rows

    folder = tmp_path / "config-only"
    tiny_backbone_config("llama").save_pretrained(folder)  # no weights: loading them would fail
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in triplet_rows(4)))
    for more in ([], ["--lora"]):
        with pytest.raises(ValueError, match=r"--head_learning_rate is set but the mean head has no parameters and "
                                             r"there is no --output_dim projection"):
            main(["--backbone", str(folder), "--train_file", str(rows), "--output_dir", str(tmp_path / "out"),
                  "--pooling", "mean", "--head_learning_rate", "1e-3", "--use_cpu", *more])
    assert not (tmp_path / "out").exists()
    model_args, *_ = build_parser().parse_args_into_dataclasses(
        ["--backbone", str(folder), "--train_file", "x", "--output_dir", "o", "--head_learning_rate", "1e-3"])
    check_head_has_parameters(model_args, {"pooling": "latent_attention"})
    check_head_has_parameters(model_args, {"pooling": "mean", "output_dim": 8})
