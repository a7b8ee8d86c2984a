"""InfoNCE against a by-hand reference, and GradCache's equality with the uncached loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_embed.contrastive import InfoNCELoss, cached_contrastive_loss, text_keys
from llm_embed.encoding import pad_batch

from .conftest import tiny_model


def reference_infonce(q, d, k, temperature, symmetric=False):
    """Loops, no vectorisation: -log softmax of the positive among all positives and negatives."""
    b = q.shape[0]
    q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    positives, negatives = d[:b], d[b:]
    total = 0.0
    for i in range(b):
        candidates = [positives[j] for j in range(b)] + [negatives[j] for j in range(b * k)]
        logits = torch.stack([q[i] @ c for c in candidates]) / temperature
        total += -(logits[i] - torch.logsumexp(logits, 0))
    loss = total / b
    if symmetric:
        back = 0.0
        for i in range(b):
            logits = torch.stack([positives[i] @ q[j] for j in range(b)]) / temperature
            back += -(logits[i] - torch.logsumexp(logits, 0))
        loss = (loss + back / b) / 2
    return loss


@pytest.mark.parametrize("negatives_per_query", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_infonce_matches_reference(negatives_per_query, symmetric):
    torch.manual_seed(0)
    q = torch.randn(5, 16, dtype=torch.float64)
    d = torch.randn(5 * (1 + negatives_per_query), 16, dtype=torch.float64)
    ours = InfoNCELoss(temperature=0.05, symmetric=symmetric)(q, d)
    assert torch.allclose(ours.double(), reference_infonce(q, d, negatives_per_query, 0.05, symmetric).double(),
                          atol=1e-4)


def test_perfect_separation_gives_near_zero_loss_and_chance_gives_log_n():
    q = torch.eye(4)
    assert InfoNCELoss(0.05)(q, q) < 1e-6
    same = torch.ones(4, 8)
    assert math.isclose(float(InfoNCELoss(0.05)(same, same)), math.log(4), rel_tol=1e-5)


@pytest.mark.parametrize("temperature", [0, -0.1, True, "0.05", float("inf"), float("nan")])
def test_bad_temperature(temperature):
    """inf was accepted (as the config refuses it): every logit 0, the loss the constant log N with
    no gradient."""
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        InfoNCELoss(temperature)


def test_batch_too_small_for_in_batch_negatives():
    with pytest.raises(ValueError, match="at least two candidates"):
        InfoNCELoss()(torch.randn(1, 8), torch.randn(1, 8))
    # one query is fine when it has a hard negative
    assert torch.isfinite(InfoNCELoss()(torch.randn(1, 8), torch.randn(2, 8)))


def test_documents_must_be_a_multiple_of_queries():
    with pytest.raises(ValueError, match="hard negatives per query"):
        InfoNCELoss()(torch.randn(3, 8), torch.randn(7, 8))


def contrastive_batch(seed=0, b=6, k=2):
    generator = torch.Generator().manual_seed(seed)
    rows = lambda n, lo, hi: [torch.randint(5, 1000, (int(torch.randint(lo, hi, (1,), generator=generator)),),
                                             generator=generator).tolist() for _ in range(n)]
    q_ids, q_mask = pad_batch(rows(b, 3, 9), 0, "right")
    d_ids, d_mask = pad_batch(rows(b * (1 + k), 4, 15), 0, "right")
    return dict(query_input_ids=q_ids, query_attention_mask=q_mask,
                document_input_ids=d_ids, document_attention_mask=d_mask)


def set_dropout(model, p):
    for module in model.backbone.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p


def loss_and_grads(model, batch, scale):
    torch.manual_seed(123)
    loss = model(**batch).loss
    (loss * scale).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, atol=1e-5), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("pooling", ["multi_layer", "latent_attention", "last_token"])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_gradcache_equals_uncached_loss_and_gradients(pooling, scale):
    """No dropout: GradCache (mini-batches of 4) and the plain loss over the same batch agree to
    1e-5 (fp32) in loss and every parameter gradient. ``scale`` stands for gradient accumulation
    or loss scaling, which reach GradCache through the incoming gradient."""
    batch = contrastive_batch()
    plain = loss_and_grads(tiny_model("llama", "bidirectional", pooling).train(), batch, scale)
    cached = loss_and_grads(tiny_model("llama", "bidirectional", pooling, loss_mini_batch_size=4).train(),
                            batch, scale)
    assert_same(plain, cached)


def test_gradcache_without_attention_masks_equals_the_plain_loss():
    """forward documents a missing attention mask as all ones; GradCache sliced it per mini-batch
    and failed with "'NoneType' object is not subscriptable" where the plain loss worked."""
    batch = {key: value for key, value in contrastive_batch().items() if "mask" not in key}
    batch = {key: torch.where(ids == 0, 7, ids) for key, ids in batch.items()}  # no padding: every token real
    plain = loss_and_grads(tiny_model("llama", "bidirectional", "latent_attention").train(), batch, 1.0)
    cached = loss_and_grads(tiny_model("llama", "bidirectional", "latent_attention", loss_mini_batch_size=4).train(),
                            batch, 1.0)
    assert_same(plain, cached)


def test_gradcache_second_pass_runs_in_the_first_pass_precision():
    """--bf16 puts the Trainer's forward under autocast, not its backward, from which GradCache's second
    pass runs: that pass recomputed in float32 (before), another function than the one that gave the loss."""
    def run(mini_batch_size):
        model = tiny_model("llama", "bidirectional", "mean", loss_mini_batch_size=mini_batch_size).train()
        seen = []
        model.backbone.layers[0].self_attn.q_proj.register_forward_hook(
            lambda module, inputs, output: seen.append((torch.is_grad_enabled(), output.dtype)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**contrastive_batch()).loss
        loss.backward()
        return loss.detach(), model.backbone.layers[0].self_attn.q_proj.weight.grad, set(seen)

    plain_loss, plain_grad, plain_seen = run(None)
    cached_loss, cached_grad, cached_seen = run(4)
    assert plain_seen == {(True, torch.bfloat16)}
    assert cached_seen == {(False, torch.bfloat16), (True, torch.bfloat16)}  # both passes in bf16
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-2, rtol=0)
    torch.testing.assert_close(cached_grad, plain_grad, atol=2e-2 * plain_grad.abs().max().item(), rtol=0)


@pytest.mark.parametrize("pooling", ["multi_layer", "mean"])
def test_gradcache_replays_dropout(pooling):
    """With dropout the reference is the uncached loss over the same mini-batch forward passes in the
    same order (so the same dropout masks are drawn): GradCache's second pass must replay each
    mini-batch's random state to match it."""
    batch = contrastive_batch()
    model = tiny_model("llama", "bidirectional", pooling, loss_mini_batch_size=4).train()
    set_dropout(model, 0.2)
    cached = loss_and_grads(model, batch, 1.0)

    reference_model = tiny_model("llama", "bidirectional", pooling).train()
    set_dropout(reference_model, 0.2)
    torch.manual_seed(123)
    q = torch.cat([reference_model.embed(batch["query_input_ids"][i:i + 4], batch["query_attention_mask"][i:i + 4])
                   for i in range(0, 6, 4)])
    d = torch.cat([reference_model.embed(batch["document_input_ids"][i:i + 4],
                                         batch["document_attention_mask"][i:i + 4])
                   for i in range(0, 18, 4)])
    loss = InfoNCELoss(reference_model.config.loss_temperature)(q, d)
    loss.backward()
    reference = (loss.detach(),
                 {n: p.grad.clone() for n, p in reference_model.named_parameters() if p.grad is not None})
    assert_same(reference, cached)


def test_dropout_really_is_random_in_training():
    """Guards the test above: without replaying the random state the two passes would differ."""
    model = tiny_model("llama", "bidirectional", "mean").train()
    set_dropout(model, 0.5)
    batch = contrastive_batch()
    a = model.embed(batch["query_input_ids"], batch["query_attention_mask"])
    b = model.embed(batch["query_input_ids"], batch["query_attention_mask"])
    assert not torch.allclose(a, b)


def test_forward_returns_loss_and_query_embeddings():
    model = tiny_model("llama", "causal", "last_token")
    out = model(**contrastive_batch(b=4, k=1))
    assert out.loss.ndim == 0 and out.loss > 0
    assert out.embeddings.shape == (4, 32)
    assert model(**contrastive_batch(b=4, k=1), return_loss=False).loss is None


def test_cached_loss_function_directly_matches():
    torch.manual_seed(0)
    weight = torch.randn(8, 8, requires_grad=True)
    embed = lambda ids, mask: ids.float() @ weight
    q, d = torch.randn(6, 8), torch.randn(12, 8)
    loss, _ = cached_contrastive_loss(embed, InfoNCELoss(0.1), (q, q), (d, d), mini_batch_size=4)
    loss.backward()
    cached = weight.grad.clone()
    weight.grad = None
    InfoNCELoss(0.1)(q @ weight, d @ weight).backward()
    assert torch.allclose(cached, weight.grad, atol=1e-5)


# ---------------------------------------------------------------- repeated texts in a batch


def keys_of(rows: list[list[int]], side: str = "right") -> torch.Tensor:
    return text_keys(*pad_batch(rows, 0, side))


def test_text_keys_tell_texts_apart_whatever_the_padding():
    rows = [[5, 6, 7], [5, 6, 7, 8], [5, 6], [7, 6, 5], [5, 6, 7], [9] * 40]
    right, left = keys_of(rows, "right"), keys_of(rows, "left")
    assert torch.equal(right, left) and right.shape == (6, 2) and right.dtype == torch.int64
    assert torch.equal(right[0], right[4])
    assert len({tuple(key.tolist()) for key in right}) == 5
    assert torch.equal(keys_of(rows[:2]), right[:2])  # the same in another batch (another padded length)
    long = [[3] * 1500, [3] * 1499 + [4]]  # past the first block of position coefficients
    assert torch.equal(keys_of(long), keys_of(long + [[5] * 2100])[:2]) and not torch.equal(*keys_of(long))


def reference_masked_infonce(q, d, texts_q, texts_d, k, temperature, symmetric=False):
    """Loops over texts: for query i, a candidate holding its positive's text, or another row's positive
    whose query has query i's text, is left out (the positive itself stays)."""
    b = q.shape[0]
    q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    total = 0.0
    for i in range(b):
        kept = [j for j in range(b * (1 + k))
                if j == i or (texts_d[j] != texts_d[i] and not (j < b and texts_q[j] == texts_q[i]))]
        logits = torch.stack([q[i] @ d[j] for j in kept]) / temperature
        total += -(logits[kept.index(i)] - torch.logsumexp(logits, 0))
    loss = total / b
    if symmetric:
        back = 0.0
        for i in range(b):
            kept = [j for j in range(b) if j == i or (texts_q[j] != texts_q[i] and texts_d[j] != texts_d[i])]
            logits = torch.stack([d[i] @ q[j] for j in kept]) / temperature
            back += -(logits[kept.index(i)] - torch.logsumexp(logits, 0))
        loss = (loss + back / b) / 2
    return loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_repeated_texts_are_left_out_of_the_negatives(symmetric):
    """A positive repeated in another row, another row's positive used as a hard negative, and one query
    with two answers: pushed away as negatives without ``mask_duplicates`` (a query's loss could not go
    below log 2); left out with it, as a by-text reference says."""
    queries = [[11, 12], [21, 22, 23], [11, 12], [41], [51, 52]]
    positives = [[101, 102], [201], [301, 302], [101, 102], [501]]
    negatives = [[901], [301, 302], [902, 903], [904], [905]]  # row 1's negative is row 2's positive
    documents = positives + negatives
    torch.manual_seed(0)
    q, d = torch.randn(5, 16, dtype=torch.float64), torch.randn(10, 16, dtype=torch.float64)
    loss = InfoNCELoss(0.05, symmetric=symmetric, mask_duplicates=True)(q, d, keys_of(queries), keys_of(documents))
    expected = reference_masked_infonce(q, d, list(map(tuple, queries)), list(map(tuple, documents)), 1, 0.05,
                                        symmetric)
    assert torch.allclose(loss.double(), expected.double(), atol=1e-6)
    assert not torch.allclose(loss, InfoNCELoss(0.05, symmetric=symmetric)(q, d), atol=1e-3)

    perfect = torch.eye(4)[[0, 0, 2, 3]]  # each query equal to its positive; rows 0 and 1 share their positive
    rows = [[7], [8], [9], [10]]
    shared = [[1], [1], [2], [3]]
    assert float(InfoNCELoss(0.05)(perfect, perfect)) > 0.3  # 2 log 2 / 4 = 0.347
    masked = InfoNCELoss(0.05, mask_duplicates=True)(perfect, perfect, keys_of(rows), keys_of(shared))
    assert float(masked) < 1e-6
    with pytest.raises(ValueError, match="mask_duplicates needs the texts' keys"):
        InfoNCELoss(mask_duplicates=True)(q, d)


def test_gradcache_with_repeated_texts_equals_the_uncached_loss():
    batch = contrastive_batch(b=6, k=1)
    batch["document_input_ids"][3] = batch["document_input_ids"][0]  # a positive in two rows
    batch["document_attention_mask"][3] = batch["document_attention_mask"][0]
    batch["query_input_ids"][4] = batch["query_input_ids"][1]  # one query, two answers
    batch["query_attention_mask"][4] = batch["query_attention_mask"][1]
    options = dict(loss_mask_duplicates=True, loss_symmetric=True)
    plain = loss_and_grads(tiny_model("llama", "bidirectional", "multi_layer", **options).train(), batch, 1.0)
    cached = loss_and_grads(tiny_model("llama", "bidirectional", "multi_layer", loss_mini_batch_size=4,
                                       **options).train(), batch, 1.0)
    assert_same(plain, cached)
    unmasked = loss_and_grads(tiny_model("llama", "bidirectional", "multi_layer", loss_symmetric=True).train(),
                              batch, 1.0)
    assert float(unmasked[0]) > float(plain[0]) + 1e-3  # the repeated texts were negatives before
