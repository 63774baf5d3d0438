import torch

from atu.head import EmbeddingHead


def test_head_is_strictly_causal():
    torch.manual_seed(0)
    head = EmbeddingHead(d_model=32, d_out=16, width=64, layers=2, heads=4, dropout=0.0).eval()
    h = torch.randn(2, 10, 32)
    base = head(h)
    changed = h.clone()
    changed[:, 6] += torch.randn(2, 32) * 5  # change position t+1 = 6
    out = head(changed)
    assert torch.allclose(out[:, :6], base[:, :6], atol=1e-6)  # ê_t for t <= 5 unchanged
    assert not torch.allclose(out[:, 6], base[:, 6])  # the changed position itself does change


def test_head_output_shape_and_trains():
    torch.manual_seed(0)
    head = EmbeddingHead(d_model=8, d_out=4, width=16, layers=1, heads=2, dropout=0.0)
    h, target = torch.randn(3, 5, 8), torch.randn(3, 5, 4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = (1 - torch.nn.functional.cosine_similarity(head(h), target, dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert head(h).shape == (3, 5, 4)
    assert losses[-1] < 0.5 * losses[0]
