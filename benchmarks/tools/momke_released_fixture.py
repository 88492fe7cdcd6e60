"""Write `tests/data/momke_released.pt`: a tiny released MoMKE model, a batch, its outputs and
training losses.

Needs a checkout of the released code (wxxv/MoMKE 2dceb57), e.g.
    git clone https://github.com/wxxv/MoMKE /tmp/MoMKE
    python benchmarks/tools/momke_released_fixture.py /tmp/MoMKE
It imports the released `MoMKE/model_expert_softmoe.py` and `MoMKE/loss.py` and calls them;
nothing of them is copied here. The losses are composed as `MoMKE/train_MoMKE.py` does: the
first stage backpropagates the three unimodal losses (their sum), the second the fused one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

WIDTHS = {"a": 6, "t": 8, "v": 5}
HIDDEN, DEPTH, HEADS, CLASSES, LENGTH, BATCH, DROPOUT = 8, 2, 2, 3, 6, 3, 0.5


def main(root: Path, target: Path) -> None:
    sys.path.insert(0, str(root / "MoMKE"))
    from loss import MaskedCELoss  # type: ignore[import-not-found]
    from model_expert_softmoe import MoMKE  # type: ignore[import-not-found]

    torch.manual_seed(0)
    args = SimpleNamespace(device="cpu", drop_rate=DROPOUT)
    model = MoMKE(
        args, *WIDTHS.values(), HIDDEN, n_classes=CLASSES, depth=DEPTH, num_heads=HEADS,
        mlp_ratio=1, drop_rate=DROPOUT, attn_drop_rate=0.0, no_cuda=True,
    )  # fmt: skip
    model.eval()

    lengths = torch.tensor([6, 4, 5])
    valid = torch.arange(LENGTH)[None, :] < lengths[:, None]  # [B, L]
    gen = torch.Generator().manual_seed(1)
    available = torch.rand(BATCH, LENGTH, 3, generator=gen) < 0.6
    available[..., 2] |= ~available.any(-1)  # at least one modality per utterance
    available[1, :, 0] = False  # a dialogue without audio: queries without a key
    available &= valid[..., None]
    features = {m: torch.randn(BATCH, LENGTH, d, generator=gen) for m, d in WIDTHS.items()}
    labels = torch.randint(0, CLASSES, (BATCH, LENGTH), generator=gen) * valid

    def released_inputs(avail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeroed = [features[m] * avail[..., k : k + 1] for k, m in enumerate(WIDTHS)]
        return torch.cat(zeroed, -1).transpose(0, 1), avail.float().transpose(0, 1)

    ce, umask, flat = MaskedCELoss(), valid.float(), labels.reshape(-1)
    outputs, losses = {}, {}
    with torch.no_grad():
        for stage, first, avail in (
            ("unimodal", True, valid[..., None].expand(-1, -1, 3)),  # complete data
            ("fusion", False, available),
        ):
            x, mask = released_inputs(avail)
            _, out, out_a, out_t, out_v, _ = model(x, mask, umask, first_stage=first)
            outputs[stage] = {"fused": out, "a": out_a, "t": out_t, "v": out_v}
            heads = [out_a, out_t, out_v] if first else [out]
            losses[stage] = sum(ce(h.reshape(-1, CLASSES), flat, umask) for h in heads)
    torch.save(
        {
            "commit": "2dceb57",
            "config": {
                "widths": WIDTHS, "hidden": HIDDEN, "depth": DEPTH, "heads": HEADS,
                "classes": CLASSES, "length": LENGTH, "dropout": DROPOUT,
            },
            "state_dict": model.state_dict(),
            "features": features,
            "available": available,
            "valid": valid,
            "labels": labels,
            "outputs": outputs,
            "losses": losses,
        },
        target,
    )  # fmt: skip
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "momke_released.pt"
    main(source, target)
