"""GCNet-style baseline `gcnet` (Lian et al., TPAMI 2023; facts from zeroQiaoba/GCNet).

A BiLSTM over the dialogue on concat(a, t, v) zeroed where missing; two graphs over a window
of neighbouring utterances of the same dialogue (temporal: earlier / same / later; speaker:
one relation per (receiver, sender) speaker pair), each a relational GCN layer (mean per
relation + root) then a graph convolution (sum + root), concatenated with its input, a BiLSTM
and ReLU(Linear); the two graph outputs are summed. One head classifies (or regresses), one
reconstructs the full input, trained on the MISSING entries only.

Graphs are dense per-relation adjacencies [B, R, L, L] within each dialogue of the batch: an
edge can neither cross dialogues (each row of the batch is one dialogue) nor touch padding.

Against the released code (zeroQiaoba/GCNet 8cce4a0, `gcnet/model.py`, `graph.py`), with its
weights copied in (`convert_released_state_dict`) the outputs, graphs and loss are equal
(`tests/test_gcnet.py`, on dialogues of equal length). What differs:
- the released BiLSTMs run over the padded batch, so their backward direction reads padding
  before a shorter dialogue's last utterance; ours read each dialogue within its length;
- windows: the released `--windowp P --windowf F` builds edges from utterance j to every i in
  [j - P, j + F], so a receiver hears F earlier and P later utterances: it equals
  `window_past=F, window_future=P` here (our names say what a receiver hears). The published
  runs use symmetric windows, which the swap leaves unchanged;
- the released model also builds an unused GRU, and per graph the nodal-attention module
  whether `--time-attn` (used in part of the published runs) is on or not: 34.1M parameters
  against our 28.1M at hidden 200 on 512/1024/1024 inputs with 4 classes. Here it is built
  when `nodal_attention=True` (each utterance then pools its dialogue's real utterances;
  the released attention renormalises its softmax over them too, so padding cannot count);
- the graph layers' width is `graph_hidden` (the code: hidden // 2, the default here);
- the released reconstruction loss flattens the padding mask batch-major against
  sequence-major features, so padded rows of a dialogue can count and real ones drop out;
  ours covers the missing entries of the real utterances (`reconstruction_loss`);
- masks: the harness's shared masks, not a CPM-Nets draw per batch; selection: the harness's
  (the released code keeps the epoch of the best weighted F1 on its "val" loader, which on
  IEMOCAP is the test fold: `test-oracle` on `wf1`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.losses import task_loss
from imerbench.method import DataSpec, Method, ModelOutput, Param
from imerbench.registry import register_method

TEMPORAL_RELATIONS = 3  # the sender is earlier than, the same as, or later than the receiver
# The released runs on every dataset (run_gcnet.sh; window 2/2 and hidden 200 among the sweep).
PUBLISHED = {"epochs": 100, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-5}


def window_adjacency(valid: Tensor, past: int, future: int) -> Tensor:
    """Receiver i hears sender j of its dialogue when i - past <= j <= i + future (self loop
    included) and both are real utterances. valid: [B, L] -> [B, L, L] bool (receiver, sender).
    """
    length = valid.shape[1]
    pos = torch.arange(length, device=valid.device)
    offset = pos[None, :] - pos[:, None]  # [L, L]: sender minus receiver
    window = (offset >= -past) & (offset <= future)
    return window[None] & valid[:, :, None] & valid[:, None, :]


def temporal_relations(valid: Tensor, past: int, future: int) -> Tensor:
    """[B, 3, L, L] float: relation 0 sender earlier, 1 same utterance, 2 sender later."""
    adj = window_adjacency(valid, past, future)
    pos = torch.arange(valid.shape[1], device=valid.device)
    offset = pos[None, :] - pos[:, None]  # [L, L]
    kinds = torch.stack([offset < 0, offset == 0, offset > 0])  # [3, L, L]
    return (adj[:, None] & kinds[None]).float()


def speaker_relations(
    speakers: Tensor, valid: Tensor, past: int, future: int, num_speakers: int
) -> Tensor:
    """[B, S*S, L, L] float: relation S * speaker(receiver) + speaker(sender)."""
    adj = window_adjacency(valid, past, future)
    pair = speakers[:, :, None] * num_speakers + speakers[:, None, :]  # [B, L, L]
    kinds = torch.arange(num_speakers**2, device=speakers.device)
    return (adj[:, None] & (pair[:, None] == kinds[None, :, None, None])).float()


class RelationalGraphConv(nn.Module):
    """R-GCN layer: root weight (with bias) + per relation the MEAN of W_r x_j over senders."""

    def __init__(self, dim_in: int, dim_out: int, relations: int) -> None:
        super().__init__()
        self.relations = relations
        self.rel = nn.Linear(dim_in, relations * dim_out, bias=False)
        self.root = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        # x: [B, L, F]; adj: [B, R, L, L] (receiver, sender)
        b, n, _ = x.shape
        messages = self.rel(x).view(b, n, self.relations, -1).transpose(1, 2)  # [B, R, L, G]
        mean = adj / adj.sum(-1, keepdim=True).clamp(min=1.0)  # [B, R, L, L]
        return (mean @ messages).sum(1) + self.root(x)  # [B, L, G]


class SumGraphConv(nn.Module):
    """Graph convolution: W_rel (sum of senders' x_j) + W_root x_i, over all relations' edges."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.rel = nn.Linear(dim_in, dim_out)
        self.root = nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        # x: [B, L, G]; adj: [B, L, L] 0/1 (receiver, sender)
        return self.rel(adj @ x) + self.root(x)


def reverse_within(valid: Tensor) -> Tensor:
    """Per dialogue, the index that reverses its real utterances and keeps padding in place.

    valid: [B, L] (a prefix of each row) -> [B, L] int64; it is its own inverse.
    """
    length = valid.shape[1]
    pos = torch.arange(length, device=valid.device)[None, :]  # [1, L]
    n = valid.sum(1, keepdim=True)  # [B, 1]
    return torch.where(pos < n, n - 1 - pos, pos)


RNN_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class DialogueRNN(nn.Module):
    """A bidirectional LSTM or GRU (2 layers in GCNet and SDR-GNN) over each dialogue's real
    utterances; padding never reaches them.

    The backward direction runs forward over each dialogue reversed within its length, so the
    padding stays at the end, after every real utterance. Same parameters and computation as
    a bidirectional `nn.LSTM`/`nn.GRU` on packed sequences (layer k's `_reverse` weights are
    `backward_rnn[k]`'s), about twice as fast on CPU (packed sequences' backward pass
    allocates a full-size gradient per time step).
    """

    def __init__(
        self, dim_in: int, hidden: int, dropout: float, layers: int = 2, cell: str = "lstm"
    ) -> None:
        super().__init__()
        rnn = RNN_CELLS[cell]
        dims = [dim_in] + [2 * hidden] * (layers - 1)
        self.forward_rnn = nn.ModuleList(rnn(d, hidden, batch_first=True) for d in dims)
        self.backward_rnn = nn.ModuleList(rnn(d, hidden, batch_first=True) for d in dims)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        # x: [B, L, F]; valid: [B, L] -> [B, L, 2 * hidden]
        rev = reverse_within(valid)[..., None]  # [B, L, 1]
        with float32_on_cpu(x):
            if x.device.type == "cpu":
                x = x.float()
            for k, (fw, bw) in enumerate(zip(self.forward_rnn, self.backward_rnn, strict=True)):
                if k:
                    x = self.drop(x)  # between layers, as nn.LSTM's dropout
                ahead, _ = fw(x)  # [B, L, H]
                back, _ = bw(x.gather(1, rev.expand_as(x)))
                x = torch.cat([ahead, back.gather(1, rev.expand_as(back))], dim=-1)
        return x


def float32_on_cpu(x: Tensor) -> AbstractContextManager[object]:
    """oneDNN has no bfloat16 LSTM on CPUs without bfloat16 units, so under bf16 autocast the
    LSTMs run in float32 on the CPU (a no-op in fp32 runs); on CUDA autocast applies."""
    return torch.autocast("cpu", enabled=False) if x.device.type == "cpu" else nullcontext()


class NodalAttention(nn.Module):
    """GCNet's optional nodal attention (`--time-attn`): each utterance pools its dialogue's
    real utterances with weights softmax(tanh((W h_i + b) . h_j)) over them."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transform = nn.Linear(dim, dim)

    def forward(self, h: Tensor, valid: Tensor) -> Tensor:
        # h: [B, L, D]; valid: [B, L] -> [B, L, D]
        scores = torch.tanh(self.transform(h) @ h.transpose(1, 2))  # [B, L(query), L(key)]
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        return scores.softmax(-1) @ h


class GraphBranch(nn.Module):
    """One graph: R-GCN -> graph convolution -> concat with input -> BiLSTM -> (nodal
    attention) -> ReLU(Linear)."""

    def __init__(
        self,
        dim: int,
        graph_hidden: int,
        relations: int,
        dropout: float,
        rnn_layers: int = 2,
        nodal_attention: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = RelationalGraphConv(dim, graph_hidden, relations)
        self.conv2 = SumGraphConv(graph_hidden, graph_hidden)
        joint = dim + graph_hidden
        self.lstm = DialogueRNN(joint, joint, dropout, rnn_layers)
        self.attention = NodalAttention(2 * joint) if nodal_attention else None
        self.linear = nn.Linear(2 * joint, joint)
        self.act = nn.ReLU()

    def forward(self, x: Tensor, relations: Tensor, valid: Tensor) -> Tensor:
        # x: [B, L, F]; relations: [B, R, L, L] -> [B, L, F + G]
        h = self.conv1(x, relations)
        h = self.conv2(h, relations.amax(1))  # the union of the relations: the window
        h = self.lstm(torch.cat([x, h], dim=-1), valid)
        if self.attention is not None:
            h = self.attention(h, valid)
        return self.act(self.linear(h))


class GCNetNet(nn.Module):
    """Dialogue BiLSTM -> temporal + speaker graph branches (summed) -> task and
    reconstruction heads."""

    def __init__(
        self,
        spec: DataSpec,
        hidden: int,
        graph_hidden: int,
        window_past: int,
        window_future: int,
        dropout: float,
        rnn_layers: int = 2,
        nodal_attention: bool = False,
    ) -> None:
        super().__init__()
        self.widths = [spec.widths[m] for m in MODALITIES]
        self.num_speakers = max(spec.num_speakers, 1)
        self.window = (window_past, window_future)
        dim_in = sum(self.widths)
        self.lstm = DialogueRNN(dim_in, hidden, dropout, rnn_layers)
        relations = (TEMPORAL_RELATIONS, self.num_speakers**2)
        self.temporal, self.speaker = (
            GraphBranch(2 * hidden, graph_hidden, r, dropout, rnn_layers, nodal_attention)
            for r in relations
        )
        joint = 2 * hidden + graph_hidden
        self.head = nn.Linear(joint, spec.num_classes)
        self.reconstruct = nn.Linear(joint, dim_in)

    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        avail = batch.available.to(batch.features["a"].dtype)  # [B, L, M]
        x = torch.cat(
            [batch.features[m] * avail[..., k : k + 1] for k, m in enumerate(MODALITIES)], -1
        )  # [B, L, d_a + d_t + d_v], zero where missing whatever the input held
        valid = batch.valid
        h = self.lstm(x, valid)  # [B, L, 2H]
        past, future = self.window
        temporal = temporal_relations(valid, past, future)  # [B, 3, L, L]
        speaker = speaker_relations(batch.speakers, valid, past, future, self.num_speakers)
        hidden = self.temporal(h, temporal, valid) + self.speaker(h, speaker, valid)  # [B, L, 2H+G]
        return ModelOutput(
            fused=self.head(hidden), extras={"reconstruction": self.reconstruct(hidden)}
        )


def reconstruction_loss(
    recon: Tensor, target: dict[str, Tensor], missing: Tensor, valid: Tensor
) -> Tensor:
    """GCNet's loss on MISSING entries only: per modality the summed squared error over its
    missing utterances divided by its width, summed over modalities, over real utterances.

    recon: [B, L, d_a + d_t + d_v]; target: modality -> [B, L, d_m]; missing: [B, L, M] bool.
    """
    total = recon.new_zeros(())
    start = 0
    for k, m in enumerate(MODALITIES):
        width = target[m].shape[-1]
        part = recon[..., start : start + width]  # [B, L, d_m]
        start += width
        keep = (missing[..., k] & valid)[..., None]  # [B, L, 1]
        # torch.where, not a product: a target at a kept-out entry cannot reach the loss at all
        err = torch.where(keep, part - target[m], torch.zeros_like(part))
        total = total + (err**2).sum() / width
    return total / valid.sum().clamp(min=1).to(recon.dtype)


# ---- released weights ---------------------------------------------------------------------------
TEMPORAL_NAMES = {"past": 0, "now": 1, "future": 2}  # released name -> our relation id
RNN_WEIGHT = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
RELEASED_NAMES = {
    "smax_fc": "head",
    "linear_rec": "reconstruct",
    "graph_net_temporal": "temporal",
    "graph_net_speaker": "speaker",
    "grufusion": "lstm",  # an LSTM in the released GCNet, despite its name
    "lin_rel": "rel",
    "lin_root": "root",
    "matchatt": "attention",
}
UNUSED = re.compile(r"gru\.")
WITHOUT_ATTENTION = re.compile(r"gru\.|.*\.matchatt\.")


def released_relation_id(graph: str, name: str) -> int:
    """Our relation id of a released relation name: temporal 'past' (the sender is earlier),
    'now', 'future'; speaker 'xy' (receiver x, sender y) is 2x + y (one speaker: '00', 0)."""
    if graph == "temporal":
        return TEMPORAL_NAMES[name]
    return 2 * int(name[0]) + int(name[1])


def convert_graph_state_dict(
    state: Mapping[str, Tensor],
    relation_order: Mapping[str, list[str]],
    names: Mapping[str, str],
    unused: re.Pattern[str],
) -> dict[str, Tensor]:
    """A released GCNet-family state dict under our names (GCNet and SDR-GNN share the
    layout): name segments renamed by `names`, `unused` ones dropped, each bidirectional RNN
    split into `DialogueRNN`'s directions, and each R-GCN's [R, in, out] weight (relations in
    the released ids' order, `relation_order`) turned into our one Linear."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if unused.match(name):
            continue
        name = ".".join(names.get(part, part) for part in name.split("."))
        rnn = RNN_WEIGHT.search(name)
        graph, _, rest = name.partition(".")
        if rnn is not None:
            kind, gate, layer, reverse = rnn.groups()
            side = "backward_rnn" if reverse else "forward_rnn"
            out[f"{name[: rnn.start()]}{side}.{layer}.{kind}_{gate}_l0"] = value
        elif rest == "conv1.weight":
            order = [released_relation_id(graph, n) for n in relation_order[graph]]
            ours = value[torch.argsort(torch.tensor(order))]  # [R, in, out] in our order
            out[f"{graph}.conv1.rel.weight"] = ours.transpose(1, 2).reshape(-1, value.shape[1])
        elif rest == "conv1.root":
            out[f"{graph}.conv1.root.weight"] = value.T
        elif rest == "conv1.bias":
            out[f"{graph}.conv1.root.bias"] = value
        else:
            out[name] = value
    return out


def convert_released_state_dict(
    state: Mapping[str, Tensor],
    relation_order: Mapping[str, list[str]],
    nodal_attention: bool = False,
) -> dict[str, Tensor]:
    """A state dict of the released GCNet `GraphModel` (base LSTM) under our names, for a
    model with or without the nodal attention (the released model always builds it);
    `relation_order` lists each graph's relation names in the order of the released ids (it
    depends on the hash seed of the process that built the edges)."""
    unused = UNUSED if nodal_attention else WITHOUT_ATTENTION
    return convert_graph_state_dict(state, relation_order, RELEASED_NAMES, unused)


@register_method("gcnet", paper_name="GCNet")
class GCNet(Method):
    """BiLSTM + temporal and speaker graphs + reconstruction of the missing inputs (GCNet)."""

    params = {
        "hidden": Param(200, low=1, help="BiLSTM width D_e (the authors sweep 50/100/200)"),
        "graph_hidden": Param(100, low=1, help="graph layers' width (released code: hidden//2)"),
        "window_past": Param(2, low=0, help="earlier utterances a node hears"),
        "window_future": Param(2, low=0, help="later utterances a node hears"),
        "rnn_layers": Param(2, low=1, help="layers of every BiLSTM"),
        "dropout": Param(0.5, low=0.0, high=0.9, help="between the BiLSTM layers"),
        "recon_weight": Param(1.0, low=0.0, help="weight of the reconstruction loss"),
        "nodal_attention": Param(False, help="the released --time-attn, after each graph"),
    }
    profiles = {
        # Small enough for the 2-core default grid: one-layer BiLSTMs (the LSTMs dominate
        # the time on CPU), few epochs at a higher learning rate.
        "quick": {
            "epochs": 40,  # a cap: runs end on a plateau (imerbench/stopping.py)
            "batch_size": 16,
            "lr": 3e-3,
            "hidden": 32,
            "graph_hidden": 16,
            "rnn_layers": 1,
        },
        "iemocap": PUBLISHED,
        "mosi": PUBLISHED,
        "mosei": PUBLISHED,
    }
    # The released code keeps the epoch of its best weighted F1 ("val" loader).
    published_selection = {"classification": "wf1", "regression": "f1"}
    needs_complete = True  # the reconstruction targets are the inputs the mask hides
    model = GCNetNet

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        rec = missing_reconstruction_loss(self.name, out, batch)
        return task_loss(out.fused, batch) + self.hp["recon_weight"] * rec


def missing_reconstruction_loss(name: str, out: ModelOutput, batch: Batch) -> Tensor:
    """`reconstruction_loss` of a training batch: the model's `reconstruction` output against
    the complete inputs at the entries the mask hides (GCNet and SDR-GNN)."""
    if batch.complete is None:
        raise ValueError(f"{name} trains on batches with `complete` (needs_complete=True)")
    full = batch.complete
    missing = full.available & ~batch.available  # [B, L, M]: recorded but masked
    return reconstruction_loss(out.extras["reconstruction"], full.features, missing, batch.valid)
