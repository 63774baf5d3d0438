"""The embedding prediction head E of Align-then-Unlearn: hidden states at the hook layer -> predicted sentence
embedding of the next k tokens, for every position.

Strictly causal: position t attends to positions <= t only. (The reference builds E from a transformer *decoder* whose
cross-attention reads the whole sequence as memory, so ê_t sees the hidden states of the very tokens it predicts.)
Training batches are right-padded, so causal attention alone keeps padding out of every real position.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_out: int,
        width: int = 768,
        layers: int = 6,
        heads: int = 8,
        ffn_mult: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.config = dict(
            d_model=d_model, d_out=d_out, width=width, layers=layers, heads=heads, ffn_mult=ffn_mult, dropout=dropout
        )
        # LayerNorm first: LLM residual streams have norms in the hundreds (Gemma scales embeddings by sqrt(d)), and
        # the head should read directions, so unlearning cannot "escape" the hinge by rescaling hidden states.
        self.inp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        block = nn.TransformerEncoderLayer(width, heads, ffn_mult * width, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_out))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, time, d_model) -> (batch, time, d_out)."""
        x = self.inp(hidden.to(self.out[1].weight.dtype))
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device, dtype=x.dtype)
        return self.out(self.blocks(x, mask=mask, is_causal=True))
