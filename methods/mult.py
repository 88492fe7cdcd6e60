"""The MulT backbone (Tsai et al., ACL 2019) of IMDer and DiCMoR at sequence length 1, and
their refinement network, with the released modules' names (mdswyz/IMDer, mdswyz/DiCMoR:
`l` is text), so that their released weights load through `length_one`.

Both released models read word-level sequences; on the GCNet layout an utterance's feature
vector is a sequence of length 1 (`methods/dicmor.py` says what that changes). The
projections are then kernel-1 convolutions (Linear, no bias, frozen: the released code runs
them without gradient), the refinement's kernel-3 convolutions act through their centre tap,
and each transformer attends over one position (computed as its value path,
`TransformerLayer.attend_one`); the LayerNorms, the sinusoidal position 1 (0 where the first
feature is exactly 0: the released padding rule), the scaling and the dropouts are the
released ones.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.losses import masked_mean
from imerbench.method import DataSpec, Method, ModelOutput, Param, RunContext

PRETRAIN, RECOVER = "pretrain", "recover"
RELEASED = {"l": "t", "v": "v", "a": "a"}  # the released modality letters, in its order
ORDER = [MODALITIES.index(m) for m in RELEASED.values()]  # our modality index of each
BACKBONE = ("l", "a", "v")  # the order of its crossmodal partners and of its last states


class ChannelAttentionBlock(nn.Module):
    """RCAB at length 1: Linear -> ReLU -> Linear, times a squeeze-excite gate, plus input."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels)
        )
        squeezed = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.Linear(channels, squeezed), nn.ReLU(), nn.Linear(squeezed, channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        return h * self.gate(h) + x


class Refinement(nn.Module):
    """Linear(d, 2d) -> residual group of channel-attention blocks -> Linear(2d, d)."""

    def __init__(self, dim: int, blocks: int, reduction: int) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, 2 * dim)
        self.blocks = nn.Sequential(
            *(ChannelAttentionBlock(2 * dim, reduction) for _ in range(blocks))
        )
        self.tail = nn.Linear(2 * dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(self.tail(self.blocks(h)) + h)


# ---- the MulT backbone ----------------------------------------------------------------------
def position_one(dim: int) -> Tensor:
    """The sinusoidal embedding of position 1 (the released tensor2tensor variant)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    emb = torch.cat([torch.sin(freq), torch.cos(freq)])
    return F.pad(emb, (0, dim % 2))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm attention (the same LayerNorm on query, key and value) and a 4x ReLU
    feed-forward, each residual."""

    def __init__(
        self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def attend_one(self, values: Tensor) -> Tensor:
        """The attention over one key: its softmax weight is 1 (dropped out per head as the
        released attention dropout drops it), so the output is out_proj(dropped v_proj(v)),
        whatever the query and key projections (they receive zero gradient either way)."""
        attn = self.self_attn
        dim = attn.embed_dim
        assert attn.in_proj_weight is not None and attn.in_proj_bias is not None
        v = F.linear(values, attn.in_proj_weight[2 * dim :], attn.in_proj_bias[2 * dim :])
        if self.training and attn.dropout > 0:
            heads = attn.num_heads
            keep = torch.ones((*v.shape[:-1], heads, 1), dtype=v.dtype, device=v.device)
            keep = F.dropout(keep, attn.dropout, True)  # the weight 1, dropped out per head
            v = (v.unflatten(-1, (heads, dim // heads)) * keep).flatten(-2)
        return attn.out_proj(v)

    def forward(self, x: Tensor, kv: Tensor | None = None) -> Tensor:
        # x, kv: [N, D], one position each; kv None: self-attention
        norm = self.layer_norms[0]
        h = self.attend_one(norm(x if kv is None else kv))
        x = x + F.dropout(h, self.res_dropout, self.training)
        h = F.relu(self.fc1(self.layer_norms[1](x)))
        h = self.fc2(F.dropout(h, self.relu_dropout, self.training))
        return x + F.dropout(h, self.res_dropout, self.training)


class TransformerEncoder(nn.Module):
    """MulT's encoder over a length-1 sequence: scaled inputs plus the embedding of position 1
    (0 where the first feature is exactly 0: the released padding rule), layers, LayerNorm."""

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
    ) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.register_buffer("position", position_one(dim), persistent=False)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(dim)
        self.embed_dropout = embed_dropout

    def embed(self, x: Tensor) -> Tensor:
        pos = self.position * (x[..., :1] != 0).to(x.dtype)
        return F.dropout(self.scale * x + pos, self.embed_dropout, self.training)

    def forward(self, x: Tensor, kv: Tensor | None = None) -> Tensor:
        # x, kv: [N, D] (one position each) -> [N, D]
        h = self.embed(x)
        # key and value: the same features, embedded (and dropped out) apart, as released;
        # over one position the key is never read
        v = None if kv is None else self.embed(kv)
        for layer in self.layers:
            h = layer(h, v)
        return self.layer_norm(h)


class MulTNet(nn.Module):
    """Frozen projections, per-modality refinements and the MulT backbone with its residual
    head; subclasses recover the missing modalities' projected features in between."""

    def __init__(
        self,
        spec: DataSpec,
        dim: int,
        heads: int,
        layers: int,
        memory_min_layers: int,
        refine_blocks: int,
        refine_reduction: int,
        text_dropout: float,
        attn_dropout: float,
        attn_dropout_a: float,
        attn_dropout_v: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        output_dropout: float,
    ) -> None:
        super().__init__()
        self.text_dropout, self.output_dropout = text_dropout, output_dropout
        for r, m in RELEASED.items():
            setattr(self, f"proj_{r}", nn.Linear(spec.widths[m], dim, bias=False))
            setattr(self, f"rec_{r}", Refinement(dim, refine_blocks, refine_reduction))
        drop = {"l": attn_dropout, "a": attn_dropout_a, "v": attn_dropout_v}
        rest = (relu_dropout, res_dropout, embed_dropout)
        for r in BACKBONE:  # crossmodal: r attended by the other two; then r's memory
            for o in BACKBONE:
                if o != r:
                    net = TransformerEncoder(dim, heads, layers, drop[o], *rest)
                    setattr(self, f"trans_{r}_with_{o}", net)
            depth = max(layers, memory_min_layers)
            mem = TransformerEncoder(2 * dim, heads, depth, attn_dropout, *rest)
            setattr(self, f"trans_{r}_mem", mem)
        joint = 6 * dim
        self.proj1 = nn.Linear(joint, joint)
        self.proj2 = nn.Linear(joint, joint)
        self.out_layer = nn.Linear(joint, spec.num_classes)

    def projected(self, batch: Batch) -> dict[str, Tensor]:
        """Released letter -> projected features [N, d] of the batch's N real utterances
        (padding is never computed: at length 1 no utterance sees another), zero input where
        missing; no gradient reaches the projections."""
        keep = batch.available[batch.valid]  # [N, M]
        out = {}
        for r, m in RELEASED.items():
            x = batch.features[m][batch.valid] * keep[:, MODALITIES.index(m), None]
            if r == "l":
                x = F.dropout(x, self.text_dropout, self.training)
            with torch.no_grad():
                out[r] = getattr(self, f"proj_{r}")(x)
        return out

    def backbone(self, proj: dict[str, Tensor]) -> Tensor:
        """The prediction [N, C] from the three modalities' (projected or recovered) features."""
        last = []
        for r in BACKBONE:
            partners = [o for o in BACKBONE if o != r]
            crossed = [getattr(self, f"trans_{r}_with_{o}")(proj[r], proj[o]) for o in partners]
            last.append(getattr(self, f"trans_{r}_mem")(torch.cat(crossed, dim=-1)))
        h = torch.cat(last, dim=-1)
        h = self.proj2(F.dropout(F.relu(self.proj1(h)), self.output_dropout, self.training)) + h
        return self.out_layer(h)


DROPOUTS = (
    "text_dropout", "attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout",
    "res_dropout", "embed_dropout", "output_dropout",
)  # fmt: skip


def released_availability(batch: Batch) -> Tensor:
    """[N, 3] bool: each real utterance's available modalities (in `projected`'s order), in
    the released order (l, v, a)."""
    return batch.available[batch.valid][:, ORDER]


def unpack(values: Tensor, valid: Tensor) -> Tensor:
    """Per-utterance rows [N, C] of the real utterances back on the batch's grid [B, L, C],
    zero at padding."""
    grid = values.new_zeros((*valid.shape, values.shape[-1]))
    return grid.index_put((*valid.nonzero(as_tuple=True),), values)


def others(i: int) -> list[int]:
    """The released indices of the two modalities other than i, in the released order."""
    return [j for j in range(len(RELEASED)) if j != i]


def from_available(avail: Tensor, i: int, first: Tensor, second: Tensor, both: Tensor) -> Tensor:
    """What recovers modality i at each utterance ([N, d]): `both` (a merge of the other two)
    where both other modalities are available, else the one's (`first` from the lower released
    index, `second` from the higher). avail: [N, 3] in the released order."""
    j, k = others(i)
    one = torch.where(avail[:, j, None], first, second)
    return torch.where((avail[:, j] & avail[:, k])[:, None], both, one)


# What DiCMoR's and IMDer's quick profiles share: short capped stages, one crossmodal layer
# and one memory layer (released: 3), two heads, two refinement blocks.
QUICK_BACKBONE = {
    "epochs": 60,  # caps: stages end on a plateau (imerbench/stopping.py)
    "stage_epoch": 30,
    "batch_size": 32,
    "lr": 3e-3,
    "heads": 2,
    "layers": 1,
    "memory_min_layers": 1,
    "refine_blocks": 2,
    "refine_reduction": 4,
}


def mult_params(**dropouts: float) -> dict[str, Param]:
    """The backbone's hyper-parameters (released MOSI sizes) with each method's dropouts."""
    params = {
        "dim": Param(32, low=2, help="projected width d"),
        "heads": Param(8, low=1, help="attention heads"),
        "layers": Param(4, low=1, help="crossmodal layers"),
        "memory_min_layers": Param(
            3, low=1, help="the memory transformers' depth is max(layers, this); 3 as released"
        ),
        "refine_blocks": Param(20, low=1, help="channel-attention blocks of the refinement"),
        "refine_reduction": Param(16, low=1, help="their squeeze factor"),
    }
    for name in DROPOUTS:
        params[name] = Param(dropouts.get(name, 0.0), low=0.0, high=0.9)
    return params


class MulTMethod(Method):
    """What DiCMoR and IMDer share around their recovery: two stages (the backbone on
    complete inputs, then everything), the released task loss (L1 for regression), gradient
    clipping by value, frozen projections. A subclass sets `model` (a `MulTNet`) and
    `recovery` (its recovery modules' name prefixes, idle while pretraining)."""

    stages = (PRETRAIN, RECOVER)
    needs_complete = True  # the pretraining inputs and the recovery's targets
    recovery: tuple[str, ...] = ()

    def build(self, spec: DataSpec) -> nn.Module:
        assert self.model is not None
        return self.model(spec, **self.model_kwargs(self.model), **self.model_kwargs(MulTNet))

    def task_loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """L1 for regression (the released loss), cross-entropy for classes."""
        if batch.complete is None:
            raise ValueError(f"{self.name} trains on batches with `complete` (needs_complete)")
        if batch.labels.dtype.is_floating_point:
            return masked_mean((out.fused.squeeze(-1) - batch.labels).abs(), batch.valid)
        pred = out.fused.flatten(0, 1)
        per_utt = F.cross_entropy(pred, batch.labels.flatten(), reduction="none")
        return masked_mean(per_utt.view_as(batch.valid), batch.valid)

    def after_backward(
        self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str, ctx: RunContext
    ) -> None:
        if self.hp["clip_value"] > 0:
            nn.utils.clip_grad_value_(model.parameters(), self.hp["clip_value"])

    def idle_parameters(self, model: nn.Module, stage: str) -> set[str]:
        frozen = ("proj_l.", "proj_a.", "proj_v.")
        if stage == PRETRAIN:
            frozen += self.recovery
        return {n for n, _ in model.named_parameters() if n.startswith(frozen)}


def length_one(name: str, value: Tensor) -> tuple[str, Tensor]:
    """A released weight's name and value in our length-1 model: the refinement's modules
    renamed, 1x1 convolutions as Linear weights, kernel-3 ones as their centre tap."""
    rec = re.match(r"^(rec_[lva])\.(\d)\.(.*)$", name)
    if rec:
        name = _refinement_name(rec.group(1), int(rec.group(2)), rec.group(3))
    if value.dim() == 3:  # Conv1d [out, in, k]: the centre tap at length 1
        value = value[:, :, value.shape[-1] // 2]
    elif value.dim() == 4:  # Conv2d 1x1
        value = value[:, :, 0, 0]
    return name, value


def _refinement_name(owner: str, part: int, rest: str) -> str:
    """rec_r.0 (Conv1d d->2d), rec_r.1 (the RCAN group: body.k = block k, body.20 = its tail
    convolution), rec_r.2 (Conv1d 2d->d), under our `Refinement` names."""
    if part == 0:
        return f"{owner}.inp.{rest}"
    if part == 2:
        return f"{owner}.out.{rest}"
    block = re.match(r"body\.(\d+)\.(.*)$", rest)
    assert block is not None, rest
    index, inner = int(block.group(1)), block.group(2)
    inner_block = re.match(r"body\.(\d)\.(.*)$", inner)
    if inner_block is None:  # the group's tail convolution
        return f"{owner}.tail.{inner}"
    k, leaf = int(inner_block.group(1)), inner_block.group(2)
    if k in (0, 2):
        return f"{owner}.blocks.{index}.body.{k}.{leaf}"
    gate = re.match(r"conv_du\.(\d)\.(.*)$", leaf)  # k == 3: the channel attention
    assert gate is not None, leaf
    return f"{owner}.blocks.{index}.gate.{gate.group(1)}.{gate.group(2)}"
