"""Write `tests/data/{gcnet,sdrgnn}_released.pt`: a tiny released GCNet or SDR-GNN model, a
batch, and its outputs.

Needs the released files in one folder (GCNet: zeroQiaoba/GCNet 8cce4a0, `gcnet/model.py`,
`module.py`, `graph.py`, `loss.py`; SDR-GNN: fufangze/SDR-GNN b455461, `model_SDRGNN.py`,
`graph.py`, `loss.py`) and `torch_geometric` (no `torch_scatter`: the one function SDR-GNN
imports from it, `scatter_add`, is supplied below from torch's own `scatter_add_`):
    pip install torch==2.13.0 torch_geometric scipy pandas
    PYTHONHASHSEED=0 python benchmarks/tools/graph_released_fixtures.py gcnet /tmp/gcnet
    PYTHONHASHSEED=0 python benchmarks/tools/graph_released_fixtures.py sdr-gnn /tmp/sdr-gnn
It imports the released modules and calls them; nothing of them is copied here. What differs
from the released runs is stated in each fixture's `notes`:
- SDR-GNN's reconstruction attention is hard-coded to width 2560 and 256 heads; the fixture
  builds it at the input width (20) with 4 heads, through the same class;
- the relation ids come from iterating a set of names (hash-seed dependent): the fixture
  records the order it got, and the tests map it to ours.
The dialogues all have the padded length: the released RNNs read padding, ours do not.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn

WIDTHS = {"a": 6, "t": 8, "v": 6}
HIDDEN, GRAPH_HIDDEN, CLASSES, LENGTH, BATCH, HEADS, DROPOUT = 6, 3, 3, 7, 3, 4, 0.5
WINDOW_P, WINDOW_F = 2, 1  # released flags; a receiver hears F earlier, P later utterances
# method -> (model module, base RNN, reconstruction weight e in (1 - e) task + e recon, or
# None for GCNet's plain sum)
RELEASED = {"gcnet": ("model", "LSTM", None), "sdr-gnn": ("model_SDRGNN", "GRU", 0.5)}


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int, dim_size: int) -> torch.Tensor:
    """`torch_scatter.scatter_add` for the 1-D case the released hypergraph layer uses."""
    assert dim == 0 and src.dim() == 1
    return src.new_zeros(dim_size).scatter_add_(0, index, src)


def small_attention(width: int, heads: int, dropout: float = 0.0) -> nn.MultiheadAttention:
    assert (width, heads) == (2560, 256), "only the hard-coded attention is resized"
    return nn.MultiheadAttention(sum(WIDTHS.values()), HEADS, dropout=dropout)


def main(method: str, root: Path, target: Path) -> None:
    module_name, base, weight = RELEASED[method]
    sys.modules["torch_scatter"] = types.SimpleNamespace(scatter_add=scatter_add)  # type: ignore[assignment]
    sys.path.insert(0, str(root))
    released = __import__(module_name)
    from graph import batch_graphify  # type: ignore[import-not-found]
    from loss import MaskedCELoss, MaskedReconLoss  # type: ignore[import-not-found]

    released.nn = types.SimpleNamespace(**{**vars(nn), "MultiheadAttention": small_attention})
    torch.manual_seed(0)
    widths = list(WIDTHS.values())
    model = released.GraphModel(
        base, *widths, HIDDEN, GRAPH_HIDDEN, n_speakers=2, window_past=WINDOW_P,
        window_future=WINDOW_F, n_classes=CLASSES, dropout=DROPOUT, time_attn=False,
        no_cuda=True,
    )  # fmt: skip
    released.nn = nn
    model.eval()

    gen = torch.Generator().manual_seed(1)
    available = torch.rand(BATCH, LENGTH, 3, generator=gen) < 0.6
    available[..., 1] |= ~available.any(-1)  # at least one modality per utterance
    full = {m: torch.randn(BATCH, LENGTH, d, generator=gen) for m, d in WIDTHS.items()}
    speakers = torch.randint(0, 2, (BATCH, LENGTH), generator=gen)
    labels = torch.randint(0, CLASSES, (BATCH, LENGTH), generator=gen)
    lengths = [LENGTH] * BATCH

    # Released layout: features [L, B, sum d] zero-filled, availability [L, B, 3], speakers
    # (qmask) and the utterance mask (umask) [B, L].
    complete = torch.cat(list(full.values()), dim=-1).transpose(0, 1)
    per_column = torch.cat(
        [available[..., k : k + 1].expand(-1, -1, d) for k, d in enumerate(widths)], dim=-1
    ).transpose(0, 1)
    masked = complete * per_column
    mask3 = available.transpose(0, 1).long()
    umask = torch.ones(BATCH, LENGTH)
    with torch.no_grad():
        log_prob, rec, _ = model([masked], speakers, umask, lengths)
        rnn = model.gru if base == "GRU" else model.lstm
        rnn_out = rnn(masked)[0].unsqueeze(2)
        branches, orders = {}, {}
        for kind in ("temporal", "speaker"):
            net = getattr(model, f"graph_net_{kind}")
            feats, edges, types_, mapping = batch_graphify(
                rnn_out, speakers, lengths, 2, WINDOW_P, WINDOW_F, kind, True
            )
            out = net(feats, edges, types_, lengths, umask)
            branches[kind] = (out[0] if isinstance(out, tuple) else out).transpose(0, 1)
            orders[kind] = sorted(mapping, key=mapping.get)  # names in relation-id order
        extra = {}
        if method == "gcnet":  # the same weights with --time-attn (its modules always exist)
            for net in (model, model.graph_net_temporal, model.graph_net_speaker):
                net.time_attn = True
            attended, attended_rec, _ = model([masked], speakers, umask, lengths)
            for net in (model, model.graph_net_temporal, model.graph_net_speaker):
                net.time_attn = False
            extra = {
                "fused_time_attn": attended.transpose(0, 1),
                "reconstruction_time_attn": attended_rec[0].transpose(0, 1),
            }
        task = MaskedCELoss()(log_prob.transpose(0, 1).reshape(-1, CLASSES), labels, umask)
        recon = MaskedReconLoss()(rec, [complete], [mask3], umask, *widths)
        loss = task + recon if weight is None else (1 - weight) * task + weight * recon

    notes = "relation order recorded"
    if method == "sdr-gnn":
        notes += "; reconstruction attention resized 2560/256 -> 20/4"
    torch.save(
        {
            "notes": notes,
            "config": {
                "widths": WIDTHS, "hidden": HIDDEN, "graph_hidden": GRAPH_HIDDEN,
                "classes": CLASSES, "heads": HEADS, "dropout": DROPOUT,
                "windowp": WINDOW_P, "windowf": WINDOW_F, "base": base,
            },
            "relation_order": orders,
            "state_dict": model.state_dict(),
            "features": full,
            "available": available,
            "speakers": speakers,
            "labels": labels,
            "outputs": {
                "fused": log_prob.transpose(0, 1),
                "reconstruction": rec[0].transpose(0, 1),
                **branches,
                **extra,
            },
            "loss": loss,
        },
        target,
    )  # fmt: skip
    print(f"wrote {target} ({target.stat().st_size} bytes); relation order {orders}")


if __name__ == "__main__":
    name = sys.argv[1]
    source = Path(sys.argv[2])
    target = Path(__file__).resolve().parents[2] / "tests" / "data"
    target.mkdir(exist_ok=True)
    main(name, source, target / f"{name.replace('-', '')}_released.pt")
