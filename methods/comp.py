"""ComP: cross-modal prompting for balanced incomplete multimodal emotion recognition.

He, Zhu, Zhang, AAAI-26 (arXiv 2512.11239); official code WenjueHE/2026-AAAI-ComP. Where the
released code departs from the paper (its quirks, numbered below), two variants share one
model:

- `comp-ref`: the released behaviour, quirks included, so published numbers can be compared
  and released checkpoints scored here (`convert_released_state_dict`). Its parameter count
  equals the released model's (8,112,627 for MOSI, 8,122,347 for IEMOCAP-4).
- `comp`: each quirk fixed behind a named option (all on by default), so an ablation can switch
  them off one at a time:
  - `fix_modulator` (quirk 1): the dynamic gradient modulator really rescales the layer-1
    prototype projectors (the released name filter matched no parameter); a classifier's error
    is 1 - p(true class) (not a raw logit minus the class index); pairwise weights are 1 where
    |sum W'| < 1e-6 (equal errors included) and clipped to [0, 2] otherwise; the utterances
    used are the real ones (the released MOSI branch also dropped every label equal to 0).
  - `fix_stage_reload` (quirk 2): at the stage switch, each modality's block1/block2 attention
    experts are restored from the stage-1 epoch where that modality's head scored best on
    validation (the dataset's primary metric: `wa`, or `f1` for regression). The released
    "reload" updated a throw-away dict and loaded nothing; it also chose on training accuracy.
  - `fix_prototype_mask` (quirk 3): missing and padded utterances are zeroed before the
    prototype projector, so they do not feed the prototypes; the released row mask (a constant
    per row, flattened in [L, B] order against [B, L] rows) is dropped.
  - `per_dialogue_prototypes` (quirk 4): each utterance is compared with its own dialogue's
    prototypes, so a prediction does not depend on the rest of its batch (the released code
    pools the B * 10 prototypes of the batch). The pooled variant pools per group of
    `batch_size` consecutive dialogues in split order: the released batches have that size,
    but the released test loader shuffles dialogues, so which dialogues share a pool (and so
    the released predictions) changes from run to run; ours are grouped in split order on
    purpose, so a cell's predictions are deterministic. Given the same groups, evaluation
    can score several groups per batch and predict what the released model predicts.
  - `fix_private_copy` (quirk 6): modality m's private branch reads m's private features (the
    released code feeds the audio private features to all three).
  - `drop_unused_parameters` (quirk 7): the second-layer prototype projectors and the second
    reverse projections, which never receive a gradient, are not built.
  - `fix_loss_double_count` (quirk 8): stage 2 counts the unimodal task losses once.
  - `fix_loss_padding` (quirk 8): reconstruction and JSD average over real utterances only.
  - `fix_fusion_zeroing` (quirk 10): in stage 2 the coordinator and fusion head see zeros at
    positions where a modality is missing, as in stage 1.
  Quirk 5 (the prototype projector is a Linear over the padded utterance axis) is the method,
  kept in both: batches come trimmed to their longest dialogue and the model pads them to the
  dataset's padded length where it reads padding. Quirk 9 (test-set selection) is the
  harness's `test-oracle`.

Readings of points the paper leaves open (what the released code computes):
- Dropout p on every Mlp, the input projections and the fusion head; 0 on the attention
  weights (the released `attn_drop_rate` defaults to 0).
- The unimodal task losses and the private "anti" terms average over all real utterances,
  including those where the modality is missing (the released loss masks padding only).
- The reconstruction target is the (not detached) input projection, of present and missing
  modalities alike; `fix_loss_padding` drops padding only.
- The modulator's per-utterance weights are averaged per position over the real utterances of
  the batch (a position without one gets 1) and scale the columns of the [10, L] weight of
  `prompt1[m].proj_n.fc1`; the bias is left alone. It runs in stage 2 only.
- The stage-1 fused output (zeroed concatenation, no coordinator) is computed but not
  trained; selection only looks at stage 2. Without a validation split nothing is restored.
- The model zeroes its inputs at missing positions itself, so it never reads them; fed
  zero-filled inputs it computes what the released model does.
- `diagnostics()`: the coordinator's mean weight per modality (`coordinator_weight_a`, ...)
  over the real utterances of the last evaluation pass (a pass starts when the model enters
  eval mode). In the harness's loop that is the test split scored with the selected weights:
  on the forced all-modalities subset (`atv`) when subset scores are computed (the default),
  else under the stored masks. Stage 1 has no coordinator: nothing is reported.
- The JSD is computed from log-sigmoids (the released code takes the log of the sigmoid, which
  gives NaN once a sigmoid saturates); equal otherwise.
- Stage 1 sends the shared and private streams through the blocks as one batch of 2B: the
  same computation, half the calls.
- Padding is read by the per-row encoders (the released reconstruction and JSD terms average
  over padded rows too) and by the prototype projector, nothing else: after the encoders,
  padded keys are masked and a padded query only feeds outputs that losses and predictions
  leave out. So a model trained on its own on a CPU runs the layers after the encoders on the
  real utterances alone (their outputs are 0 at padding) and does not multiply out a missing
  input's projection (the bias) (`ComPNet.pack_rows`); evaluation computes every position of
  the batch. The harness trains ComP as a stack of models (imerbench/stacking.py, a stack of
  one when alone), which computes every row, so the members' rows stay aligned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.layers import ExpertStack, Mlp, Rows, twin_mlp
from imerbench.losses import masked_mean, task_loss
from imerbench.method import DataSpec, Method, ModelOutput, Param, RunContext
from imerbench.registry import register_method
from imerbench.stacking import generator_of, per_dialogue

UNIMODAL, MULTIMODAL = "unimodal", "multimodal"
OTHERS = {"a": ("t", "v"), "t": ("a", "v"), "v": ("a", "t")}  # in the released order
MODULATOR_TOLERANCE = 1e-6
ROW_MASK = -10000.0  # the released prototype-softmax row mask

FIXES: dict[str, str] = {
    "fix_modulator": "the gradient modulator rescales the layer-1 prototype projectors",
    "fix_stage_reload": "restore each modality's best stage-1 attention experts (validation)",
    "fix_prototype_mask": "missing and padded utterances do not feed the prototypes",
    "per_dialogue_prototypes": "prototypes per dialogue, not pooled over the batch",
    "fix_private_copy": "modality m's private branch reads m's private features",
    "drop_unused_parameters": "do not build the modules that never get a gradient",
    "fix_loss_double_count": "stage 2 counts the unimodal losses once",
    "fix_loss_padding": "reconstruction and JSD average over real utterances only",
    "fix_fusion_zeroing": "zero missing modalities before the stage-2 coordinator and fusion",
}
RELEASED = dict.fromkeys(FIXES, False)  # the `comp-ref` variant


# ---- the released parameter names ------------------------------------------------------------
# (released template, our template); {m} a modality, {k} a layer 1/2, {i} a block index.
_NAME_RULES = (
    ("{m}_in_proj.0.", "in_proj.{m}."),
    ("shared_enc_{m}.", "shared_enc.{m}."),
    ("private_enc_{m}.", "private_enc.{m}."),
    ("dec_{m}.", "decoder.{m}."),
    ("block{k}.blocks.{i}.Transformer_{m}.", "block{k}.layers.{i}.{m}."),
    ("nlp_head_{m}.", "heads.{m}."),
    ("nlp_head.", "fusion_head."),
    ("proj1.", "fusion_proj."),
    ("router.", "coordinator."),
    ("prop_proj_rev_{m}_{k}.", "prop_out{k}.{m}."),
    ("prop_proj_{m}_{k}.", "prop_in{k}.{m}."),
    ("prop_former_{m}_{k}.", "prompt{k}.{m}."),
)
_FIELDS = {"m": "(?P<m>[atv])", "k": "(?P<k>[12])", "i": r"(?P<i>\d+)"}


@cache
def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)  # literal, field, literal, ...
    regex = "".join(_FIELDS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(regex)


def _rename(name: str, forward: bool) -> str:
    for released, ours in _NAME_RULES:
        source, target = (released, ours) if forward else (ours, released)
        match = _pattern(source).match(name)
        if match:
            return target.format(**match.groupdict()) + name[match.end() :]
    raise KeyError(name)


@cache
def released_name(name: str) -> str:
    """The released model's name of one of our parameters."""
    return _rename(name, forward=False)


def convert_released_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict saved from the released `ComP` model, under our names (`comp-ref`)."""
    converted, unknown = {}, []
    for name, value in state.items():
        try:
            converted[_rename(name, forward=True)] = value
        except KeyError:
            unknown.append(name)
    if unknown:
        raise ValueError(f"not a released ComP state dict: unknown names {unknown[:5]}")
    return converted


# ---- the model --------------------------------------------------------------------------------
def pools(batch: int, group: int, members: int = 1) -> list[tuple[slice, int]]:
    """The pools of a batch of `batch` dialogues, as (dialogues, pool size): pools of `group`
    consecutive dialogues, the last one shorter where `group` does not divide `batch`; in a
    stack of `members` models (imerbench/stacking.py), so within each member's dialogues."""
    own = batch // members
    full = own - own % group
    out = []
    for k in range(members):
        start = k * own
        tail = (slice(start + full, start + own), own - full)
        parts = ((slice(start, start + full), group), tail)
        out += [(dialogues, size) for dialogues, size in parts if size]
    return out


def paired(first: Tensor, second: Tensor, members: int) -> Tensor:
    """Two row sets as one batch, each member's rows of `first` then of `second` (one member:
    `first` then `second`), so a stack's batch stays member-major."""
    return torch.cat([first.unflatten(0, (members, -1)), second.unflatten(0, (members, -1))], 1)


def unpaired(both: Tensor, members: int) -> tuple[Tensor, Tensor]:
    """The two row sets of `paired` (flattened back)."""
    halves = both.unflatten(0, (members, 2, -1))
    return halves[:, 0].flatten(0, 1), halves[:, 1].flatten(0, 1)


def released_row_bias(keep: Tensor, group: int, members: int = 1) -> Tensor:
    """The released prototype-softmax row mask as the constant it adds to each row, [B, L]:
    -10000 where `keep` is False at the row's position in [L, g] order, read against rows in
    [g, L] order within each pool of `group` dialogues (the last pool may be shorter). A
    constant per row, so softmax ignores it up to rounding; it is kept for that rounding."""
    b, length = keep.shape
    parts = []
    for rows, g in pools(b, group, members):
        part = keep[rows].reshape(-1, g, length).transpose(1, 2)
        parts.append(part.reshape(-1, length))
    return (1 - torch.cat(parts).float()) * ROW_MASK


class PromptGenerator(nn.Module):
    """Progressive prompt generation: prototypes over the utterance axis, then prompts.

    Prototypes: Mlp(L -> n -> n) over the padded utterance axis, [B, n, D]. Prompt of an
    utterance: Mlp(D -> P -> P) of its softmax-weighted cosine mix of prototypes, plus a
    Linear(D, P) of itself. The layer-2 generator reuses layer 1's prototypes.
    """

    def __init__(
        self,
        length: int,
        dim: int,
        prompt_dim: int,
        prototypes: int,
        dropout: float,
        *,
        with_projector: bool = True,
        per_dialogue: bool = True,
        exclude_missing: bool = True,
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        self.per_dialogue = per_dialogue
        self.pool_size = pool_size  # pooled prototypes: dialogues per pool (None: the batch)
        self.exclude_missing = exclude_missing
        self.proj_n = Mlp(length, prototypes, prototypes, dropout) if with_projector else None
        self.proj_d = Mlp(dim, prompt_dim, prompt_dim, dropout)
        self.proj_prompt = nn.Linear(dim, prompt_dim)

    stack_members = 0  # models in the stack this generator computes; 0: not in a stack

    def group(self, batch: int) -> int:
        """Dialogues per pool of prototypes (1: each dialogue its own), within a member."""
        own = batch // max(self.stack_members, 1)
        return 1 if self.per_dialogue else min(self.pool_size or own, own)

    def prototypes(self, x: Tensor, keep: Tensor) -> Tensor:
        # x: [B, L, D] over the padded length; keep: [B, L] bool (present, real) -> [B, n, D]
        if self.proj_n is None:
            raise RuntimeError("this prompt generator reuses another's prototypes")
        if self.exclude_missing:
            x = x * keep.unsqueeze(-1).to(x.dtype)
        return self.proj_n(x.transpose(1, 2)).transpose(1, 2)

    def row_bias(self, keep: Tensor) -> Tensor | None:
        """The released row mask [B, L] for `keep` over the padded length (None: fixed)."""
        if self.exclude_missing:
            return None
        return released_row_bias(keep, self.group(len(keep)), max(self.stack_members, 1))

    def forward(self, x: Tensor, rows: Rows, prototypes: Tensor, row_bias: Tensor | None) -> Tensor:
        # x: [R, D]; prototypes: [B, n, D]; row_bias: [R] or None -> prompt [R, P]
        b = rows.batch
        group = self.group(b)
        # One pool: every row against every prototype of the batch. In a stack (even of one)
        # each member's pool is mixed alike, so a member's numbers never depend on the stack.
        if group == b and not self.stack_members:
            mixed = self.mix(x, prototypes.flatten(0, 1), row_bias)
        else:
            grid, bias = rows.grid(x), None if row_bias is None else rows.grid(row_bias)
            parts = []
            for sl, g in pools(b, group, max(self.stack_members, 1)):
                k = (sl.stop - sl.start) // g
                xs = grid[sl].reshape(k, -1, grid.shape[-1])  # [k, g*L, D]
                bs = None if bias is None else bias[sl].reshape(k, -1)
                bank = prototypes[sl].reshape(k, -1, prototypes.shape[-1])  # [k, g*n, D]
                parts.append(self.mix(xs, bank, bs).view_as(grid[sl]))
            mixed = rows.rows(torch.cat(parts))
        return self.proj_d(mixed) + self.proj_prompt(x)

    @staticmethod
    def mix(x: Tensor, bank: Tensor, row_bias: Tensor | None) -> Tensor:
        """Each row's softmax-weighted cosine mix of the prototypes of its pool.
        x: [..., r, D]; bank: [..., g*n, D]; row_bias: [..., r] -> [..., r, D]"""
        sim = F.normalize(x, dim=-1) @ F.normalize(bank, dim=-1).transpose(-1, -2)
        if row_bias is not None:
            sim = sim + row_bias.unsqueeze(-1).to(sim.dtype)
        return sim.softmax(dim=-1) @ bank


class UniformDropout(nn.Dropout):
    """`nn.Dropout` whose mask, on a CPU, keeps an element where a uniform draw in [0, 1) is at
    least p: the same Bernoulli(1 - p) mask and scaling, drawn about three times faster there
    than by `bernoulli_`. Elsewhere (a GPU's fused dropout kernel), `nn.Dropout` itself."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu":
            return super().forward(x)
        noise = torch.rand(x.shape, device=x.device).ge_(self.p).div_(1 - self.p)
        return x * noise.to(x.dtype)


def _per_modality(make: Callable[[str], nn.Module]) -> nn.ModuleDict:
    return nn.ModuleDict({m: make(m) for m in MODALITIES})


@dataclass
class Encoded:
    """The per-row encoders' outputs per modality, over one of three row sets: `padded` the
    [B, pad_length, D] grid (the losses or the projector read padded rows), `window` the
    batch's [B, L, D] grid, `rows` the packed rows after the encoders [R, D] (`Rows`)."""

    where: str  # "padded", "window" or "rows"
    proj: dict[str, Tensor]
    shared: dict[str, Tensor]
    private: dict[str, Tensor]
    rec: dict[str, Tensor]
    valid: Tensor  # [B, pad_length], [B, L] or [R] bool: a real utterance


class ComPNet(nn.Module):
    """Shared/private encoders, two expert blocks with cross-modal prompting between them,
    unimodal heads, a coordinator and a fusion head (see the module docstring).

    Batches may be shorter than the padded length (`pad_length`): positions past the batch's
    length are padding, and the model adds them where they count: the prototype projector
    (a Linear over the padded utterance axis) and, in training, the encoders' rows that the
    released losses average over. Trained on its own on a CPU, the layers after the encoders
    run on the real utterances alone (`pack_rows`; see `Rows`); in a stack every row runs.
    """

    def __init__(
        self,
        spec: DataSpec,
        hidden: int = 256,
        depth: int = 4,
        heads: int = 2,
        dropout: float = 0.5,
        lbd: float = 0.3,
        prototypes: int = 10,
        prompt_dim: int = 16,
        *,
        per_dialogue_prototypes: bool = True,
        fix_prototype_mask: bool = True,
        fix_private_copy: bool = True,
        drop_unused_parameters: bool = True,
        fix_fusion_zeroing: bool = True,
        fix_loss_padding: bool = True,
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        d, p, c = hidden, prompt_dim, spec.num_classes
        self.hidden, self.prompt_dim, self.lbd = d, p, lbd
        self.pad_length = spec.pad_length
        self.fix_private_copy = fix_private_copy
        self.fix_fusion_zeroing = fix_fusion_zeroing
        self.fix_prototype_mask = fix_prototype_mask
        self.fix_loss_padding = fix_loss_padding
        # Index the rows that are computed (present inputs, real utterances): less arithmetic
        # for a few gathers and host syncs per forward. None: on a CPU only, where arithmetic
        # is the cost; these sizes leave a GPU mostly idle, waiting on kernel launches, so
        # there the extra gathers and syncs would only add to a step. A stack of models
        # (imerbench/stacking.py) computes every row: its members' rows must stay aligned.
        self.pack_rows: bool | None = None
        self.stack_members = 0  # 0: not in a stack; else the stack's size (>= 1)

        self.in_proj = _per_modality(lambda m: nn.Linear(spec.widths[m], d))
        self.in_drop = nn.Dropout(dropout)
        self.shared_enc = _per_modality(lambda m: Mlp(d, d, d, dropout))
        self.private_enc = _per_modality(lambda m: Mlp(d, d, d, dropout))
        self.decoder = _per_modality(lambda m: Mlp(2 * d, d, d, dropout))
        self.block1 = ExpertStack(d, depth // 2, heads, dropout=dropout, attn_dropout=0.0)
        self.block2 = ExpertStack(d, depth // 2, heads, dropout=dropout, attn_dropout=0.0)
        self.heads = _per_modality(lambda m: nn.Linear(d, c))

        def generator(with_projector: bool) -> PromptGenerator:
            return PromptGenerator(
                spec.pad_length,
                d,
                p,
                prototypes,
                dropout,
                with_projector=with_projector,
                per_dialogue=per_dialogue_prototypes,
                exclude_missing=fix_prototype_mask,
                pool_size=pool_size,
            )

        keep_unused = not drop_unused_parameters
        self.prompt1 = _per_modality(lambda m: generator(True))
        self.prompt2 = _per_modality(lambda m: generator(keep_unused))
        self.prop_in1 = _per_modality(lambda m: nn.Linear(d + 2 * p, d))
        self.prop_out1 = _per_modality(lambda m: Mlp(d, d, d + 2 * p, dropout))
        self.prop_in2 = _per_modality(lambda m: nn.Linear(d + 2 * p, d))
        self.prop_out2 = (  # released: built, never used
            _per_modality(lambda m: Mlp(d, d, d + 2 * p, dropout)) if keep_unused else None
        )

        self.coordinator = Mlp(3 * d, d, 3, dropout)
        self.fusion_proj = nn.Linear(3 * d, 3 * d)
        self.fusion_drop = nn.Dropout(dropout)
        self.fusion_head = nn.Linear(3 * d, c)
        for parent in list(self.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.Dropout:
                    setattr(parent, name, UniformDropout(child.p))
        self.reset_coordinator_stats()

    # ---- coordinator statistics (diagnostics, not state) -------------------------------------
    def reset_coordinator_stats(self) -> None:
        self.coordinator_sum: Tensor | None = None  # [3]
        self.coordinator_count: Tensor | None = None  # []

    def train(self, mode: bool = True) -> ComPNet:
        if self.training and not mode:  # a new evaluation pass begins
            self.reset_coordinator_stats()
        return super().train(mode)

    def coordinator_means(self) -> dict[str, float]:
        if self.coordinator_sum is None or self.coordinator_count is None:
            return {}
        means = (self.coordinator_sum / self.coordinator_count.clamp(min=1)).tolist()
        return {f"coordinator_weight_{m}": w for m, w in zip(MODALITIES, means, strict=True)}

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        # Loss-only ingredients (private features and branch, reconstructions) are computed in
        # training mode only: evaluation needs the predictions alone.
        train = self.training
        length = batch.length
        if length > self.pad_length:
            raise ValueError(f"batch length {length} exceeds the padded length {self.pad_length}")
        indexed = self.pack_rows if self.pack_rows is not None else batch.valid.device.type == "cpu"
        indexed = indexed and not self.stack_members
        keep = batch.available & batch.valid.unsqueeze(-1)  # [B, L, 3]
        rows = Rows.of(batch.valid, keep, packed=train and indexed)
        enc = self.encode(batch, keep, rows, stage, indexed)
        shared = {m: self.to_rows(enc, enc.shared[m], rows) for m in MODALITIES}
        extras: dict[str, Any] = {"shared": enc.shared, "valid": enc.valid}
        if train:
            extras.update(proj=enc.proj, rec=enc.rec, private=enc.private, private_heads={})

        if stage == UNIMODAL:
            x, heads = {}, {}
            for m in MODALITIES:
                if not train:
                    x[m] = self.block2.forward_rows(
                        self.block1.forward_rows(shared[m], m, rows), m, rows
                    )
                    heads[m] = rows.grid(self.heads[m](x[m]))
                    continue
                # The shared stream and the private branch share the blocks and heads: one pass.
                source = self.to_rows(enc, enc.private[m if self.fix_private_copy else "a"], rows)
                k = max(self.stack_members, 1)
                both, twice = paired(shared[m], source, k).flatten(0, 1), rows.twice(k)
                both = self.block2.forward_rows(self.block1.forward_rows(both, m, twice), m, twice)
                x[m] = unpaired(both, k)[0]  # [R, D]
                own, private = unpaired(self.heads[m](both), k)
                heads[m], extras["private_heads"][m] = rows.grid(own), rows.grid(private)
            joint = torch.cat([x[m].masked_fill(~rows.keep[m][:, None], 0) for m in x], dim=-1)
        else:
            x, extras["prototypes"] = self.propagate(enc, shared, keep, rows)
            heads = {m: rows.grid(self.heads[m](x[m])) for m in MODALITIES}
            if self.fix_fusion_zeroing:
                x = {m: x[m].masked_fill(~rows.keep[m][:, None], 0) for m in x}
            weights = self.coordinator(torch.cat([x[m] for m in MODALITIES], -1)).softmax(-1)
            joint = torch.cat([weights[:, k : k + 1] * x[m] for k, m in enumerate(x)], dim=-1)
            extras["coordinator"] = rows.grid(weights)  # [B, L, 3]
            if not train:
                self._record(extras["coordinator"].detach(), batch.valid)
        hidden = joint + self.fusion_drop(F.relu(self.fusion_proj(joint)))  # [R, 3D]
        return ModelOutput(fused=rows.grid(self.fusion_head(hidden)), heads=heads, extras=extras)

    def encode(self, batch: Batch, keep: Tensor, rows: Rows, stage: str, indexed: bool) -> Encoded:
        """Input projections, shared/private encoders and decoders, row by row.

        They run over the padded grid where the released losses read padded rows (with their
        own dropout noise) or, in stage 2, where the projector reads them (training; evaluation
        adds the padded rows' value, the same for all, in `projector_input`); else over the
        rows after the encoders. A missing input is zero, so its projection is the bias:
        `indexed`, only the present inputs are multiplied.
        """
        train, (b, n), pad = self.training, batch.valid.shape, self.pad_length
        padded = train and (
            not self.fix_loss_padding or (stage == MULTIMODAL and not self.fix_prototype_mask)
        )
        if padded:
            where, valid = "padded", F.pad(batch.valid, (0, pad - n))  # [B, pad_length]
        elif rows.index is None:
            where, valid = "window", batch.valid  # [B, L]
        else:
            where, valid = "rows", rows.rows(batch.valid)  # [R]
        proj, shared, private, rec = {}, {}, {}, {}
        for k, m in enumerate(MODALITIES):
            linear, x = self.in_proj[m], batch.features[m]
            if indexed:
                present = keep[..., k].flatten().nonzero().squeeze(1)  # positions in [B, L]
                h = F.linear(x.flatten(0, 1).index_select(0, present), linear.weight)
                if where == "padded":
                    target = present // n * pad + present % n
                elif where == "rows":
                    target = batch.valid.flatten().cumsum(0).index_select(0, present) - 1
                else:
                    target = present
                out = h.new_zeros(valid.numel(), h.shape[-1]).index_copy(0, target, h)
                out = (out + linear.bias.to(h.dtype)).view(*valid.shape, -1)
            else:
                out = linear(x * keep[..., k : k + 1].to(x.dtype))  # [B, L, D]
                if where == "padded" and n < pad:
                    fill = per_dialogue(linear.bias.to(out.dtype), b)[:, None]
                    fill = fill.expand(b, pad - n, -1)
                    out = torch.cat([out, fill], dim=1)
            proj[m] = self.in_drop(out)
            if train:
                shared[m], private[m] = twin_mlp(self.shared_enc[m], self.private_enc[m], proj[m])
                rec[m] = self.decoder[m](torch.cat([shared[m], private[m]], dim=-1))
            else:
                shared[m] = self.shared_enc[m](proj[m])
        return Encoded(where, proj, shared, private, rec, valid)

    @staticmethod
    def to_rows(enc: Encoded, value: Tensor, rows: Rows) -> Tensor:
        """An encoder output at the rows after the encoders, [R, D]."""
        if enc.where == "rows":
            return value
        return rows.rows(value[:, : rows.length])

    def projector_input(self, enc: Encoded, m: str, rows: Rows) -> Tensor:
        """Modality m's shared features over the padded grid [B, pad_length, D]."""
        b, n, pad = rows.batch, rows.length, self.pad_length
        value = enc.shared[m]
        if enc.where == "padded":
            return value
        grid = rows.grid(value) if enc.where == "rows" else value  # [B, L, D]
        if n == pad:
            return grid
        if self.fix_prototype_mask:  # zeroed where missing or padding anyway
            return F.pad(grid, (0, 0, 0, pad - n))
        # Evaluation: a padded row's input is 0, its projection the bias, all rows alike.
        assert not self.training, "training reads padded rows from the padded grid"
        filler = self.shared_enc[m](self.in_proj[m].bias.to(value.dtype))  # a stack's: [K, D]
        filler = per_dialogue(filler.to(grid.dtype), b)[:, None].expand(b, pad - n, -1)
        return torch.cat([grid, filler], dim=1)

    def propagate(
        self, enc: Encoded, shared: dict[str, Tensor], keep: Tensor, rows: Rows
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Prompts (layer 1), propagation step 1, prompts (layer 2), momentum, step 2."""
        d, p, n = self.hidden, self.prompt_dim, rows.length
        keep = F.pad(keep, (0, 0, 0, self.pad_length - n))  # [B, pad_length, 3]
        protos, bias = {}, {}
        for k, m in enumerate(MODALITIES):
            gen = self.prompt1[m]
            protos[m] = gen.prototypes(self.projector_input(enc, m, rows), keep[..., k])
            full = gen.row_bias(keep[..., k])  # [B, pad_length] or None
            bias[m] = None if full is None else rows.rows(full[:, :n])
        prompt1 = {m: self.prompt1[m](shared[m], rows, protos[m], bias[m]) for m in MODALITIES}
        z, carried = {}, {}  # carried[(u, m)]: u's prompt as carried through m's stream
        for m, (u, w) in OTHERS.items():
            h = self.prop_in1[m](torch.cat([shared[m], prompt1[u], prompt1[w]], dim=-1))
            h = self.prop_out1[m](self.block1.forward_rows(h, m, rows))  # [R, D + 2P]
            z[m], carried[u, m], carried[w, m] = h.split([d, p, p], dim=-1)
        prompt2 = {m: self.prompt2[m](z[m], rows, protos[m], bias[m]) for m in MODALITIES}
        x = {}
        for m, (u, w) in OTHERS.items():
            pu = self.lbd * carried[u, m] + (1 - self.lbd) * prompt2[u]
            pw = self.lbd * carried[w, m] + (1 - self.lbd) * prompt2[w]
            h = self.prop_in2[m](torch.cat([z[m], pu, pw], dim=-1))
            x[m] = self.block2.forward_rows(h, m, rows)  # [R, D]
        return x, protos

    def _record(self, weights: Tensor, valid: Tensor) -> None:
        keep = valid.unsqueeze(-1).to(weights.dtype)
        total, count = (weights * keep).sum((0, 1)), keep.sum()
        if self.coordinator_sum is None or self.coordinator_count is None:
            self.coordinator_sum, self.coordinator_count = total, count
        else:
            self.coordinator_sum = self.coordinator_sum + total
            self.coordinator_count = self.coordinator_count + count


# ---- losses and the gradient modulator --------------------------------------------------------
def jsd(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen-Shannon divergence per row of [..., D] Bernoulli-like values given as logs,
    summed over D; in log space, so saturated sigmoids give 0, not NaN."""
    log_mid = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (log_p.exp() * (log_p - log_mid) + log_q.exp() * (log_q - log_mid)).sum(-1)


def disentangling(
    shared: dict[str, Tensor], private: dict[str, Tensor], valid: Tensor, fix_padding: bool
) -> Tensor:
    """Sum over modality pairs (i, j) of |cos(p_i, p_j)| + |cos(p_i, s_i)| + |cos(p_j, s_j)|
    + JSD(sigmoid(s_i), sigmoid(s_j)). Cosines average over real utterances; JSD over every
    row, padding included (the released way), or over real utterances with `fix_padding`.

    Each |cos(p_m, s_m)| appears in two pairs: computed once, counted twice.
    """
    priv = torch.stack([private[m] for m in MODALITIES])  # [3, B, L, D]
    sh = torch.stack([shared[m] for m in MODALITIES])
    i, j = torch.triu_indices(3, 3, 1, device=sh.device)  # the pairs (a,t), (a,v), (t,v)
    cos_own = F.cosine_similarity(priv, sh, dim=-1).abs().sum(0)  # [B, L]
    cos_pairs = F.cosine_similarity(priv[i], priv[j], dim=-1).abs().sum(0)
    log_sig = F.logsigmoid(sh)
    div = jsd(log_sig[i], log_sig[j]).sum(0)  # [B, L]
    div = masked_mean(div, valid) if fix_padding else div.sum() / max(div.numel(), 1)
    return 2 * masked_mean(cos_own, valid) + masked_mean(cos_pairs, valid) + div


def reconstruction(
    proj: dict[str, Tensor], rec: dict[str, Tensor], valid: Tensor, fix_padding: bool
) -> Tensor:
    """MSE of the decoders' reconstructions of the input projections."""
    sq = torch.cat([(rec[m] - proj[m]) ** 2 for m in MODALITIES], dim=-1)  # [B, L, 3D]
    return masked_mean(sq.mean(-1), valid) if fix_padding else sq.mean()


def away_from_label(
    pred: Tensor, batch: Batch, pad_length: int, generator: torch.Generator | None = None
) -> Tensor:
    """The private "anti" term: classes, cross-entropy of 1 - logits; regression, MSE to
    clip(1.5 N(0, 1), -3, 3) noise drawn per position of the padded [B, pad_length] grid (a
    trimmed batch reads the same noise as the padded one), from the cell's own generator."""
    if not batch.labels.dtype.is_floating_point:
        return task_loss(1 - pred, batch)
    labels = batch.labels
    shape = (len(labels), pad_length)
    noise = torch.randn(shape, dtype=labels.dtype, device=labels.device, generator=generator)
    noise = noise[:, : labels.shape[1]]
    noise = (1.5 * noise).clamp(-3, 3)
    return masked_mean((pred.squeeze(-1) - noise) ** 2, batch.valid)


def unimodal_errors(heads: dict[str, Tensor], batch: Batch, fixed: bool) -> tuple[Tensor, Tensor]:
    """Per-utterance errors [3, B, L] of the unimodal heads, and which utterances count."""
    labels = batch.labels
    pred = torch.stack([heads[m].detach() for m in MODALITIES])  # [3, B, L, C]
    if labels.dtype.is_floating_point:
        errors = (pred.squeeze(-1) - labels).abs()
    else:
        index = labels.expand(3, *labels.shape).unsqueeze(-1)
        if fixed:  # 1 - p(true class)
            errors = 1 - pred.softmax(-1).gather(-1, index).squeeze(-1)
        else:  # released: the raw logit of the true class minus the class index
            errors = (pred.gather(-1, index).squeeze(-1) - labels).abs()
    if labels.dtype.is_floating_point and not fixed:
        return errors, labels != 0  # released: drops padding and every label equal to 0
    return errors, batch.valid


def modulator_weights(errors: Tensor, keep: Tensor, fixed: bool) -> Tensor:
    """Column weights [3, L]: per modality m and utterance, the mean over the two other
    modalities o of W = (sum W' - W') / sum W' with W' = error_m - error_o (sums over the
    kept utterances), then averaged per position over the kept utterances (1 where none).

    Fixed: W = 1 where |sum W'| < tolerance (equal errors included), else clipped to [0, 2].
    """
    diff = (errors[:, None] - errors[None, :]) * keep  # W' [3 (m), 3 (o), B, L]
    total = diff.sum((-2, -1), keepdim=True)  # [3, 3, 1, 1]
    if fixed:
        small = total.abs() < MODULATOR_TOLERANCE
        pair = ((total - diff) / torch.where(small, 1.0, total)).clamp(0, 2)
        pair = torch.where(small, 1.0, pair)
    else:
        pair = (total - diff) / (total + 1e-10)
    others = ~torch.eye(3, dtype=torch.bool, device=errors.device)
    utterance = (pair * others[..., None, None]).sum(1) / 2  # [3, B, L]
    counts = keep.sum(0)  # [L]
    mean = (utterance * keep).sum(1) / counts.clamp(min=1)
    return torch.where(counts > 0, mean, 1.0)


def modulator_targets(model: ComPNet, fixed: bool) -> dict[str, nn.Parameter]:
    """The [n, L] weight of each layer-1 prototype projector's first layer; under the
    released name filter (`prop_former_{m}.proj_n.fc1`, no layer suffix), nothing."""
    targets = {}
    if fixed:
        for m in MODALITIES:
            projector = model.prompt1[m].proj_n
            assert projector is not None
            targets[m] = projector.fc1.weight
        return targets
    for name, param in model.named_parameters():
        for m in MODALITIES:
            if f"prop_former_{m}.proj_n.fc1" in released_name(name) and "bias" not in name:
                targets[m] = param
    return targets


# ---- the method -------------------------------------------------------------------------------
_REAL = {"lr": 1e-4, "weight_decay": 1e-5}


class ComP(Method):
    """ComP (AAAI-26): cross-modal prompting with a gradient modulator and a coordinator."""

    params = {
        "hidden": Param(256, low=2, help="feature width D"),
        "depth": Param(4, low=2, help="attention layers, split between block1 and block2"),
        "heads": Param(2, low=1, help="attention heads"),
        "dropout": Param(0.5, low=0.0, high=0.9),
        "lbd": Param(0.3, low=0.0, high=1.0, help="momentum of the carried prompts"),
        "prototypes": Param(10, low=1, help="prototypes per prompt generator"),
        "prompt_dim": Param(16, low=1, help="prompt width"),
        **{name: Param(True, help=text) for name, text in FIXES.items()},
    }
    profiles = {
        # Small enough for the default grid on two CPU cores (no dropout: its sampling is about
        # a sixth of a CPU step at this size).
        "quick": {
            "epochs": 60,  # caps: stages end on a plateau (imerbench/stopping.py)
            "stage_epoch": 30,
            "batch_size": 16,
            "lr": 5e-3,
            "hidden": 32,
            "depth": 2,
            "dropout": 0.0,
        },
        "iemocap": {"epochs": 200, "stage_epoch": 100, "batch_size": 16, **_REAL},
        "mosi": {"epochs": 300, "stage_epoch": 150, "batch_size": 32, **_REAL},
        "mosei": {"epochs": 100, "stage_epoch": 50, "batch_size": 32, **_REAL},
    }
    stages = (UNIMODAL, MULTIMODAL)
    # Batches come trimmed to their longest dialogue; the model pads where the prototype
    # projector (a Linear over the padded utterance axis) and the released losses need it.
    fixed_length = False

    def prediction_group(self) -> int | None:
        """Pooled prototypes are pooled per group of `batch_size` consecutive dialogues (the
        released batches); per-dialogue prototypes depend on their own dialogue only."""
        return None if self.hp["per_dialogue_prototypes"] else self.hp["batch_size"]

    stackable = True

    def build(self, spec: DataSpec) -> nn.Module:
        return ComPNet(spec, pool_size=self.hp["batch_size"], **self.model_kwargs(ComPNet))

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """One Adam over all parameters, kept across the stages (the harness steps it over
        one flat buffer, `imerbench/optim.py`)."""
        return torch.optim.Adam(
            model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"]
        )

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        assert isinstance(model, ComPNet)
        ex, fix_padding = out.extras, self.hp["fix_loss_padding"]
        total = disentangling(ex["shared"], ex["private"], ex["valid"], fix_padding)
        if stage == UNIMODAL:
            for m in MODALITIES:
                total = total + task_loss(out.heads[m], batch)
                private = ex["private_heads"][m]
                anti = away_from_label(private, batch, model.pad_length, generator_of(model))
                total = total + anti
            return total
        unimodal = sum(task_loss(out.heads[m], batch) for m in MODALITIES)
        times = 1 if self.hp["fix_loss_double_count"] else 2
        total = total + reconstruction(ex["proj"], ex["rec"], ex["valid"], fix_padding)
        return total + task_loss(out.fused, batch) + times * unimodal

    def after_backward(
        self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str, ctx: RunContext
    ) -> None:
        """The dynamic gradient modulator (stage 2)."""
        if stage != MULTIMODAL:
            return
        assert isinstance(model, ComPNet)
        fixed = self.hp["fix_modulator"]
        targets = modulator_targets(model, fixed)
        if not targets:
            return
        errors, keep = unimodal_errors(out.heads, batch, fixed)
        weights = modulator_weights(errors, keep, fixed)  # [3, L]
        for k, m in enumerate(MODALITIES):
            param = targets.get(m)
            if param is not None and param.grad is not None:
                # Columns: positions; those past the batch's length hold no utterance (1).
                column = F.pad(weights[k], (0, param.shape[1] - len(weights[k])), value=1.0)
                param.grad.mul_(column.to(param.grad.dtype))

    # ---- the stage-switch reload --------------------------------------------------------------
    @staticmethod
    def expert_names(model: nn.Module, m: str) -> list[str]:
        """State-dict names of modality m's attention experts in block1 and block2."""
        pattern = re.compile(rf"block[12]\.layers\.\d+\.{m}\.")
        return [name for name in model.state_dict() if pattern.match(name)]

    def on_epoch_end(
        self,
        model: nn.Module,
        epoch: int,
        stage: str,
        val_scores: dict[str, dict[str, float]],
        ctx: RunContext,
    ) -> None:
        """Keep each modality's experts of its best unimodal validation epoch (in the run's
        context), by the primary metric of its unimodal head."""
        if stage != UNIMODAL or not self.hp["fix_stage_reload"]:
            return
        best: dict[str, tuple[float, dict[str, Tensor]]] = ctx.state.setdefault("best_experts", {})
        state = model.state_dict()
        for m in MODALITIES:
            score = val_scores.get(f"head-{m}", {}).get(ctx.primary)
            if score is None or not ctx.better(score, best[m][0] if m in best else None):
                continue
            best[m] = (score, {k: state[k].detach().clone() for k in self.expert_names(model, m)})

    def on_stage_start(self, model: nn.Module, stage: str, ctx: RunContext) -> None:
        if stage == UNIMODAL:
            ctx.state.pop("best_experts", None)
        elif self.hp["fix_stage_reload"] and ctx.state.get("best_experts"):
            state = model.state_dict()
            with torch.no_grad():
                for _, experts in ctx.state["best_experts"].values():
                    for name, value in experts.items():
                        state[name].copy_(value)

    def idle_parameters(self, model: nn.Module, stage: str) -> set[str]:
        if stage == UNIMODAL:
            idle = ("prompt", "prop_", "coordinator.", "fusion_", "decoder.")
            return {n for n, _ in model.named_parameters() if n.startswith(idle)}
        unused = re.compile(r"prompt2\.[atv]\.proj_n\.|prop_out2\.")
        return {n for n, _ in model.named_parameters() if unused.match(n)}

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        return model.coordinator_means() if isinstance(model, ComPNet) else {}


register_method("comp", "ComP (AAAI-26), each released quirk fixed (options fix_*)")(ComP)
register_method("comp-ref", "ComP as released, quirks included", paper_name="ComP", fixed=RELEASED)(
    ComP
)
