"""ComP: cross-modal prompting for balanced incomplete multimodal emotion recognition.

He, Zhu, Zhang, AAAI-26 (arXiv 2512.11239); official code WenjueHE/2026-AAAI-ComP. The method,
quirk by quirk, is described in `specs/comp.md`. Two variants share one model:

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
    `batch_size` consecutive dialogues, which are the released batches; evaluation can then
    score several groups per batch and still predict what the released model predicts.
  - `fix_private_copy` (quirk 6): modality m's private branch reads m's private features (the
    released code feeds the audio private features to all three).
  - `drop_unused_parameters` (quirk 7): the second-layer prototype projectors and the second
    reverse projections, which never receive a gradient, are not built.
  - `fix_loss_double_count` (quirk 8): stage 2 counts the unimodal task losses once.
  - `fix_loss_padding` (quirk 8): reconstruction and JSD average over real utterances only.
  - `fix_fusion_zeroing` (quirk 10): in stage 2 the coordinator and fusion head see zeros at
    positions where a modality is missing, as in stage 1.
  Quirk 5 (the prototype projector is a Linear over the padded utterance axis) is the method,
  kept in both (`fixed_length`). Quirk 9 (test-set selection) is the harness's `test-oracle`.

Readings of points the spec leaves open (what the released code computes):
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
- The model zeroes its inputs at missing positions itself, so it never reads them
  (`zero_fill` is not needed); fed zero-filled inputs it computes what the released model does.
- `diagnostics()`: the coordinator's mean weight per modality (`coordinator_weight_a`, ...)
  over the real utterances of the last evaluation pass (a pass starts when the model enters
  eval mode). In the harness's loop that is the test split scored with the selected weights:
  on the forced all-modalities subset (`atv`) when subset scores are computed (the default),
  else under the stored masks. Stage 1 has no coordinator: nothing is reported.
- The JSD is computed from log-sigmoids (the released code takes the log of the sigmoid, which
  gives NaN once a sigmoid saturates); equal otherwise.
- Stage 1 sends the shared and private streams through the blocks as one batch of 2B: the
  same computation, half the calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.batch import Batch
from imerbench.corpus import MODALITIES
from imerbench.layers import ExpertStack, Mlp
from imerbench.losses import masked_mean, task_loss
from imerbench.method import DataSpec, Method, ModelOutput, Param
from imerbench.registry import register_method

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
class PromptGenerator(nn.Module):
    """Progressive prompt generation: prototypes over the utterance axis, then prompts.

    Prototypes: Mlp(L -> n -> n) over the (padded) utterance axis, [B, n, D]. Prompt of an
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

    def prototypes(self, x: Tensor, keep: Tensor) -> Tensor:
        # x: [B, L, D]; keep: [B, L] bool (modality present, real utterance) -> [B, n, D]
        if self.proj_n is None:
            raise RuntimeError("this prompt generator reuses another's prototypes")
        if self.exclude_missing:
            x = x * keep.unsqueeze(-1).to(x.dtype)
        return self.proj_n(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor, keep: Tensor, prototypes: Tensor) -> Tensor:
        # x: [B, L, D]; keep: [B, L]; prototypes: [B, n, D] -> prompt [B, L, P]
        b = x.shape[0]
        group = 1 if self.per_dialogue else min(self.pool_size or b, b)
        full = b - b % group
        parts = [(slice(0, full), group), (slice(full, b), b - full)]
        mixed = torch.cat(
            [self.mix(x[rows], keep[rows], prototypes[rows], g) for rows, g in parts if g]
        )
        return self.proj_d(mixed) + self.proj_prompt(x)

    def mix(self, x: Tensor, keep: Tensor, prototypes: Tensor, group: int) -> Tensor:
        """Each utterance's softmax-weighted cosine mix of the prototypes of its group of
        `group` consecutive dialogues (1: its own dialogue; the released code: its batch)."""
        b, length, d = x.shape
        k, n = b // group, prototypes.shape[1]
        xn = F.normalize(x, dim=-1).reshape(k, group * length, d)
        bank = prototypes.reshape(k, group * n, d)
        sim = xn @ F.normalize(bank, dim=-1).transpose(1, 2)  # [k, g*L, g*n]
        if not self.exclude_missing:
            # The released mask: one constant per row (so softmax ignores it, up to rounding),
            # flattened in [L, g] order against rows in [g, L] order, within each group.
            rows = keep.reshape(k, group, length).transpose(1, 2).reshape(k, group * length)
            sim = sim + ((1 - rows.to(x.dtype)) * ROW_MASK).unsqueeze(-1)
        return (sim.softmax(dim=-1) @ bank).view(b, length, d)


def _per_modality(make: Callable[[str], nn.Module]) -> nn.ModuleDict:
    return nn.ModuleDict({m: make(m) for m in MODALITIES})


class ComPNet(nn.Module):
    """Shared/private encoders, two expert blocks with cross-modal prompting between them,
    unimodal heads, a coordinator and a fusion head (see the module docstring)."""

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
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        d, p, c = hidden, prompt_dim, spec.num_classes
        self.hidden, self.prompt_dim, self.lbd = d, p, lbd
        self.fix_private_copy = fix_private_copy
        self.fix_fusion_zeroing = fix_fusion_zeroing

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
        keep = batch.available & batch.valid.unsqueeze(-1)  # [B, L, 3]
        masks = {m: keep[..., k] for k, m in enumerate(MODALITIES)}  # m -> [B, L]
        proj, shared, private, rec = {}, {}, {}, {}
        for m in MODALITIES:
            x = batch.features[m] * masks[m].unsqueeze(-1).to(batch.features[m].dtype)
            proj[m] = self.in_drop(self.in_proj[m](x))  # [B, L, D]
            shared[m] = self.shared_enc[m](proj[m])
            if train:
                private[m] = self.private_enc[m](proj[m])
                rec[m] = self.decoder[m](torch.cat([shared[m], private[m]], dim=-1))
        extras: dict[str, Any] = {"shared": shared}
        if train:
            extras.update(proj=proj, rec=rec, private=private, private_heads={})

        if stage == UNIMODAL:
            x, heads = {}, {}
            for m in MODALITIES:
                if not train:
                    x[m] = self.blocks(shared[m], m, masks[m])
                    heads[m] = self.heads[m](x[m])
                    continue
                # The shared stream and the private branch share the blocks and heads: one pass.
                source = private[m] if self.fix_private_copy else private["a"]
                both = self.blocks(torch.cat([shared[m], source]), m, masks[m].repeat(2, 1))
                x[m] = both[: len(both) // 2]  # [B, L, D]
                heads[m], extras["private_heads"][m] = self.heads[m](both).chunk(2)
            joint = torch.cat([x[m].masked_fill(~masks[m].unsqueeze(-1), 0) for m in x], dim=-1)
        else:
            x, extras["prototypes"] = self.propagate(shared, masks)
            heads = {m: self.heads[m](x[m]) for m in MODALITIES}
            if self.fix_fusion_zeroing:
                x = {m: x[m].masked_fill(~masks[m].unsqueeze(-1), 0) for m in x}
            weights = self.coordinator(torch.cat([x[m] for m in MODALITIES], -1)).softmax(-1)
            joint = torch.cat([weights[..., k : k + 1] * x[m] for k, m in enumerate(x)], dim=-1)
            extras["coordinator"] = weights  # [B, L, 3]
            if not self.training:
                self._record(weights.detach(), batch.valid)
        hidden = joint + self.fusion_drop(F.relu(self.fusion_proj(joint)))  # [B, L, 3D]
        return ModelOutput(fused=self.fusion_head(hidden), heads=heads, extras=extras)

    def blocks(self, x: Tensor, m: str, keep: Tensor) -> Tensor:
        return self.block2(self.block1(x, m, keep), m, keep)

    def propagate(
        self, shared: dict[str, Tensor], masks: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Prompts (layer 1), propagation step 1, prompts (layer 2), momentum, step 2."""
        d, p = self.hidden, self.prompt_dim
        protos = {m: self.prompt1[m].prototypes(shared[m], masks[m]) for m in MODALITIES}
        prompt1 = {m: self.prompt1[m](shared[m], masks[m], protos[m]) for m in MODALITIES}
        z, carried = {}, {}  # carried[(u, m)]: u's prompt as carried through m's stream
        for m, (u, w) in OTHERS.items():
            h = self.prop_in1[m](torch.cat([shared[m], prompt1[u], prompt1[w]], dim=-1))
            h = self.prop_out1[m](self.block1(h, m, masks[m]))  # [B, L, D + 2P]
            z[m], carried[u, m], carried[w, m] = h.split([d, p, p], dim=-1)
        prompt2 = {m: self.prompt2[m](z[m], masks[m], protos[m]) for m in MODALITIES}
        x = {}
        for m, (u, w) in OTHERS.items():
            pu = self.lbd * carried[u, m] + (1 - self.lbd) * prompt2[u]
            pw = self.lbd * carried[w, m] + (1 - self.lbd) * prompt2[w]
            h = self.prop_in2[m](torch.cat([z[m], pu, pw], dim=-1))
            x[m] = self.block2(h, m, masks[m])  # [B, L, D]
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


def away_from_label(pred: Tensor, batch: Batch) -> Tensor:
    """The private "anti" term: classes, cross-entropy of 1 - logits; regression, MSE to
    clip(1.5 N(0, 1), -3, 3) noise drawn per utterance."""
    if not batch.labels.dtype.is_floating_point:
        return task_loss(1 - pred, batch)
    noise = (1.5 * torch.randn_like(batch.labels)).clamp(-3, 3)
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
            "epochs": 8,
            "stage_epoch": 3,
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
    fixed_length = True  # the prototype projector is a Linear over the padded utterance axis

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self._best: dict[str, tuple[float, dict[str, Tensor]]] = {}  # m -> (score, experts)

    @property
    def batch_dependent(self) -> bool:  # type: ignore[override]
        return not self.hp["per_dialogue_prototypes"]

    def evaluation_batch_size(self) -> int:
        """Pooled prototypes are pooled per group of `batch_size` consecutive dialogues (the
        released batches), so evaluation may take many groups per batch at once."""
        size = self.hp["batch_size"]
        if not self.batch_dependent:
            return self.eval_batch_size
        return max(1, self.eval_batch_size // size) * size

    def build(self, spec: DataSpec) -> nn.Module:
        self._best = {}
        hp = self.hp
        return ComPNet(
            spec,
            hp["hidden"],
            hp["depth"],
            hp["heads"],
            hp["dropout"],
            hp["lbd"],
            hp["prototypes"],
            hp["prompt_dim"],
            per_dialogue_prototypes=hp["per_dialogue_prototypes"],
            fix_prototype_mask=hp["fix_prototype_mask"],
            fix_private_copy=hp["fix_private_copy"],
            drop_unused_parameters=hp["drop_unused_parameters"],
            fix_fusion_zeroing=hp["fix_fusion_zeroing"],
            pool_size=hp["batch_size"],
        )

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """One Adam over all parameters, kept across the stages (fused: ~300 tensors)."""
        return torch.optim.Adam(
            model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"], fused=True
        )

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        ex, fix_padding = out.extras, self.hp["fix_loss_padding"]
        total = disentangling(ex["shared"], ex["private"], batch.valid, fix_padding)
        if stage == UNIMODAL:
            for m in MODALITIES:
                total = total + task_loss(out.heads[m], batch)
                total = total + away_from_label(ex["private_heads"][m], batch)
            return total
        unimodal = sum(task_loss(out.heads[m], batch) for m in MODALITIES)
        times = 1 if self.hp["fix_loss_double_count"] else 2
        total = total + reconstruction(ex["proj"], ex["rec"], batch.valid, fix_padding)
        return total + task_loss(out.fused, batch) + times * unimodal

    def after_backward(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> None:
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
                param.grad.mul_(weights[k].to(param.grad.dtype))  # columns: positions

    # ---- the stage-switch reload --------------------------------------------------------------
    @staticmethod
    def expert_names(model: nn.Module, m: str) -> list[str]:
        """State-dict names of modality m's attention experts in block1 and block2."""
        pattern = re.compile(rf"block[12]\.layers\.\d+\.{m}\.")
        return [name for name in model.state_dict() if pattern.match(name)]

    def on_epoch_end(
        self, model: nn.Module, epoch: int, stage: str, val_scores: dict[str, dict[str, float]]
    ) -> None:
        if stage != UNIMODAL or not self.hp["fix_stage_reload"]:
            return
        state = model.state_dict()
        for m in MODALITIES:
            scores = val_scores.get(f"head-{m}", {})
            score = scores.get("wa", scores.get("f1"))
            if score is None or score != score:  # absent or NaN
                continue
            if m not in self._best or score > self._best[m][0]:
                experts = {k: state[k].detach().clone() for k in self.expert_names(model, m)}
                self._best[m] = (score, experts)

    def on_stage_start(self, model: nn.Module, stage: str) -> None:
        if stage == UNIMODAL:
            self._best = {}
        elif self.hp["fix_stage_reload"] and self._best:
            state = model.state_dict()
            with torch.no_grad():
                for _, experts in self._best.values():
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
register_method("comp-ref", "ComP as released, quirks included", **RELEASED)(ComP)
