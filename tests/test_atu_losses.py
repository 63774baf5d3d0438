"""ATU's losses and its caches: the fast path must give the reference path's numbers."""

import torch

from atu.head import EmbeddingHead
from atu.methods.atu import Batchable, align_loss, cache_states, hidden_at, make_chunks, relative_drift, unlearn_loss
from atu.models import decoder_layers

TEXTS = [
    "Warren Buffett is the chairman and CEO of Berkshire Hathaway, based in Omaha, Nebraska.",
    "The cat sat on the mat.",
    "Bruce Lee founded Jeet Kune Do and starred in Enter the Dragon, released in 1973 after his death.",
]


def _data(tokenizer, encoder, k=3, max_length=24):
    chunks = make_chunks(TEXTS, tokenizer, encoder.tokenizer, k=k, max_length=max_length)
    encode = lambda texts: torch.as_tensor(encoder.encode(texts, convert_to_numpy=True))
    return chunks, Batchable(chunks, encode, tokenizer.pad_token_id, "cpu")


def test_hinge_ignores_padding_and_positions_below_tau():
    concept = torch.tensor([1.0, 0.0])
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # cos 1, 0, 1
    valid = torch.tensor([[True, True, False]])  # last position is padding
    # mean over the 2 valid positions of max(0, cos - 0.5): (0.5 + 0) / 2
    assert torch.isclose(unlearn_loss(pred, concept, valid, tau=0.5), torch.tensor(0.25))
    pred_pad_changed = pred.clone()
    pred_pad_changed[0, 2] = torch.tensor([5.0, 0.1])
    assert torch.isclose(unlearn_loss(pred_pad_changed, concept, valid, 0.5), torch.tensor(0.25))
    assert unlearn_loss(pred, concept, valid, tau=1.0) == 0


def test_align_loss_is_one_minus_cosine_over_valid_positions():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.isclose(align_loss(pred, target, torch.tensor([[True, True]])), torch.tensor(0.5))
    assert torch.isclose(align_loss(pred, target, torch.tensor([[True, False]])), torch.tensor(0.0))


def test_relative_drift_is_zero_for_the_original_and_scale_free():
    h0 = torch.randn(2, 4, 8) * 100
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert relative_drift(h0, h0, mask) == 0
    assert torch.isclose(relative_drift(2 * h0, h0, mask), torch.tensor(1.0))


def test_encoder_targets_match_encoding_each_window_per_step(tokenizer, encoder):
    chunks, data = _data(tokenizer, encoder)
    for i, c in enumerate(chunks):
        for t, w in enumerate(c.windows):
            if w is not None:
                fresh = torch.as_tensor(encoder.encode([w], convert_to_numpy=True))[0]
                assert torch.allclose(data.targets[i, t], fresh, atol=1e-5)
            else:
                assert not data.valid[i, t]


def test_truncated_forward_equals_full_forward_hidden_state(tiny_model, tokenizer, encoder):
    _, data = _data(tokenizer, encoder)
    ids, attn = data.ids, data.attn
    for layer in (1, 2, 4):
        full = tiny_model(input_ids=ids, attention_mask=attn.long(), output_hidden_states=True).hidden_states[layer]
        fast = hidden_at(tiny_model, layer, ids, attn)
        if layer < 4:  # HF applies the final norm to the last entry; ours is the raw residual stream everywhere
            assert torch.allclose(full[attn], fast[attn], atol=1e-5)


def test_cached_alignment_gives_the_same_loss_and_gradients_as_recomputing(tiny_model, tokenizer, encoder):
    _, data = _data(tokenizer, encoder)
    layer = 3
    data.states = cache_states(tiny_model, layer, data, batch_size=2)
    torch.manual_seed(0)
    head = EmbeddingHead(
        tiny_model.config.hidden_size, data.targets.shape[-1], width=32, layers=1, heads=2, dropout=0.0
    )
    rows = torch.tensor([2, 0])
    ids, attn, valid, targets = data.batch(rows)

    def loss_and_grads(states):
        head.zero_grad()
        loss = align_loss(head(states), targets, valid)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in head.parameters()]

    cached_loss, cached_grads = loss_and_grads(data.states[rows, : ids.shape[1]])
    with torch.no_grad():
        recomputed = hidden_at(tiny_model, layer, ids, attn)  # the reference re-runs the LLM every step
    ref_loss, ref_grads = loss_and_grads(recomputed)
    assert torch.allclose(cached_loss, ref_loss, atol=1e-6)
    for a, b in zip(cached_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_truncated_unlearning_step_has_the_full_forward_gradients(tiny_model, tokenizer, encoder):
    _, data = _data(tokenizer, encoder)
    layer = 2
    head = EmbeddingHead(
        tiny_model.config.hidden_size, data.targets.shape[-1], width=32, layers=1, heads=2, dropout=0.0
    ).eval()
    concept = torch.as_tensor(encoder.encode(["Warren Buffett"], convert_to_numpy=True))[0]
    block = decoder_layers(tiny_model)[0]

    def grads(states_fn):
        tiny_model.zero_grad()
        loss = unlearn_loss(head(states_fn()), concept, data.valid, tau=-1.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in block.parameters()]

    full = lambda: tiny_model(
        input_ids=data.ids, attention_mask=data.attn.long(), output_hidden_states=True
    ).hidden_states[layer]
    fast = lambda: hidden_at(tiny_model, layer, data.ids, data.attn)
    (l1, g1), (l2, g2) = grads(full), grads(fast)
    assert torch.allclose(l1, l2, atol=1e-6)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)
