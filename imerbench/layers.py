"""Building blocks shared by several methods (one implementation, not copies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (the MoMKE/ComP feed-forward)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class KeyMaskedAttention(nn.Module):
    """Self-attention over the utterances of a dialogue where only the KEYS are masked.

    A query attends to the utterances where its stream's modality is present; a query
    with no present key gets 0. Output is AV + Mlp(AV): no LayerNorm, no output projection
    (as in MoMKE and ComP). Callers add it residually.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 2,
        mlp_ratio: float = 1.0,
        dropout: float = 0.0,
        attn_dropout: float | None = None,  # on the attention weights; None: `dropout`
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout if attn_dropout is None else attn_dropout)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        # x: [B, L, D]; key_mask: [B, L] bool
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(x))
        out = self.attend(q, k, v, key_mask)  # [B, L, D]
        return out + self.mlp(out)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three projections of x [..., D] as one product (a wider matrix runs faster)."""
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        """Heads [B, H, L, D/H] each, key_mask [B, L] bool -> [B, L, D]. A query with no
        present key attends to every position (finite softmax and gradient), then is zeroed."""
        b, h, n, dh = q.shape
        keys = key_mask[:, None, None, :]  # [B, 1, 1, L]
        has_key = keys.any(dim=-1, keepdim=True)  # [B, 1, 1, 1]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keys | ~has_key,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            scale=self.scale,
        )  # [B, H, L, D/H]
        return (out * has_key).transpose(1, 2).reshape(b, n, h * dh)


class ExpertStack(nn.Module):
    """`depth` layers, each holding one key-masked attention module per modality.

    The MoMKE "experts" (and ComP's blocks): a stream is sent through the modules of one
    chosen modality, layer after layer, residually: x = x + layer[expert](x). Which keys a
    stream may attend to is the caller's choice (usually where its own modality is present).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 2,
        mlp_ratio: float = 1.0,
        dropout: float = 0.0,
        modalities: tuple[str, ...] = ("a", "t", "v"),
        attn_dropout: float | None = None,  # None: `dropout`
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    m: KeyMaskedAttention(dim, heads, mlp_ratio, dropout, attn_dropout)
                    for m in modalities
                }
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor, expert: str, key_mask: Tensor) -> Tensor:
        # x: [B, L, D]; key_mask: [B, L] bool
        for layer in self.layers:
            x = x + layer[expert](x, key_mask)
        return x
