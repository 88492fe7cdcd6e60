"""Building blocks shared by several methods (one implementation, not copies).

Layers work on a batch's [B, L, D] grid of utterances; the attention layers can also work on
packed rows (`Rows`): the real utterances only, as one flat axis [R, D], which saves the work
on padding wherever rows meet only in key-masked attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.data import MODALITIES
from imerbench.stacking import CellDropout, linear


@dataclass(frozen=True)
class Rows:
    """The utterance rows a model computes, as one flat axis [R, ...].

    Dense: every position of the batch's [B, L] grid, padding included. Packed: the real
    utterances only. Where rows meet only in attention whose padded keys are masked (and in
    row-wise layers), a real row's values are the same either way, and so are losses and
    predictions that read real rows only; packed, the outputs are 0 at padded positions.
    """

    batch: int  # B
    length: int  # L
    index: Tensor | None  # [R] positions in the flattened [B, L] grid; None: all of them
    keys: dict[str, Tensor]  # modality -> [B, L] keys its stream may attend to
    keep: dict[str, Tensor]  # modality -> [R] rows where it is present

    @classmethod
    def of(cls, valid: Tensor, keep: Tensor, packed: bool) -> Rows:
        # valid: [B, L]; keep: [B, L, 3] (present and real)
        b, length = valid.shape
        index = valid.flatten().nonzero().squeeze(1) if packed else None
        keys = {m: keep[..., k] for k, m in enumerate(MODALITIES)}
        flat = keep.flatten(0, 1) if index is None else keep.flatten(0, 1).index_select(0, index)
        return cls(b, length, index, keys, {m: flat[:, k] for k, m in enumerate(MODALITIES)})

    def rows(self, grid: Tensor) -> Tensor:
        """[B, L, ...] -> [R, ...]"""
        flat = grid.flatten(0, 1)
        return flat if self.index is None else flat.index_select(0, self.index)

    def grid(self, rows: Tensor) -> Tensor:
        """[R, ...] -> [B, L, ...], 0 at the positions not computed."""
        if self.index is not None:
            shape = (self.batch * self.length, *rows.shape[1:])
            rows = rows.new_zeros(shape).index_copy(0, self.index, rows)
        return rows.unflatten(0, (self.batch, self.length))

    def twice(self, members: int = 1) -> Rows:
        """The same rows of a batch stacked on itself (2B dialogues); in a stack of `members`
        models, each member's dialogues twice in a row, so the batch stays member-major."""
        index = None
        if self.index is not None:
            if members > 1:
                raise ValueError("packed rows cannot be stacked; use dense rows in a stack")
            index = torch.cat([self.index, self.index + self.batch * self.length])
        keys = {m: k.unflatten(0, (members, -1)).repeat(1, 2, 1).flatten(0, 1)
                for m, k in self.keys.items()}  # fmt: skip
        keep = {m: k.unflatten(0, (members, -1)).repeat(1, 2).flatten(0, 1)
                for m, k in self.keep.items()}  # fmt: skip
        return Rows(2 * self.batch, self.length, index, keys, keep)


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


def twin_mlp(first: Mlp, second: Mlp, x: Tensor) -> tuple[Tensor, Tensor]:
    """Two `Mlp`s of the same shape on the same input, their first layers as one product."""
    weight = torch.cat([first.fc1.weight, second.fc1.weight], dim=-2)  # also [K, out, in]
    bias = torch.cat([first.fc1.bias, second.fc1.bias], dim=-1)
    hidden = first.drop(first.act(linear(x, weight, bias)))
    one, two = hidden.chunk(2, dim=-1)
    return first.drop(first.fc2(one)), second.drop(second.fc2(two))


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

    def forward_rows(self, x: Tensor, rows: Rows, key_mask: Tensor) -> Tensor:
        """`forward` over rows [R, D]: the same arithmetic, queries only where computed."""
        b, n, d, h = rows.batch, rows.length, x.shape[-1], self.heads
        # [R, D] -> [B, H, L, D/H] each
        q, k, v = (rows.grid(t).view(b, n, h, d // h).transpose(1, 2) for t in self.qkv(x))
        out = rows.rows(self.attend(q, k, v, key_mask))  # [R, D]
        return out + self.mlp(out)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three projections of x [..., D] as one product (a wider matrix runs faster)."""
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight], dim=-2)
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias], dim=-1)
        q, k, v = linear(x, weight, bias).chunk(3, dim=-1)  # also a stack's [K, out, in]
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        """Heads [B, H, L, D/H] each, key_mask [B, L] bool -> [B, L, D]. A query with no
        present key attends to every position (finite softmax and gradient), then is zeroed."""
        b, h, n, dh = q.shape
        keys = key_mask[:, None, None, :]  # [B, 1, 1, L]
        has_key = keys.any(dim=-1, keepdim=True)  # [B, 1, 1, 1]
        allowed = keys | ~has_key
        drop = self.attn_drop
        drawn = isinstance(drop, CellDropout) and drop.noise is not None
        if self.training and drop.p > 0 and drawn:
            # The weights' dropout drawn from the cell's own stream (see imerbench/stacking.py)
            scores = (q @ k.transpose(-1, -2)) * self.scale
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            out = drop(weights) @ v
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed,
                dropout_p=drop.p if self.training else 0.0,
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

    def forward_rows(self, x: Tensor, expert: str, rows: Rows) -> Tensor:
        """`forward` over rows [R, D], with the expert's modality's keys in `rows`."""
        for layer in self.layers:
            attention = layer[expert]
            assert isinstance(attention, KeyMaskedAttention)
            x = x + attention.forward_rows(x, rows, rows.keys[expert])
        return x
