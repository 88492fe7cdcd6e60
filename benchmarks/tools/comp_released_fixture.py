"""Write `tests/data/comp_released.pt`: a tiny released ComP model, inputs, outputs and losses.

Needs a checkout of the released code (github.com/WenjueHE/2026-AAAI-ComP), e.g.
    git clone https://github.com/WenjueHE/2026-AAAI-ComP /tmp/comp-released
    python benchmarks/tools/comp_released_fixture.py /tmp/comp-released
It only imports the released `ComP/model.py` and `ComP/loss.py` and calls them; nothing of
them is copied here. The loss below is our own composition of the released loss classes, in
the order `ComP/train_mr.py` adds them (stage 1: unimodal + private "anti" terms + the
disentangling term; stage 2: fused + twice the unimodal terms + reconstruction + disentangling).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

WIDTHS = {"a": 6, "t": 8, "v": 5}
HIDDEN, DEPTH, HEADS, CLASSES, LENGTH, BATCH, LBD, DROPOUT = 8, 4, 2, 3, 12, 3, 0.3, 0.5


def main(root: Path, target: Path) -> None:
    sys.path.insert(0, str(root / "ComP"))
    from loss import DisentangledLoss, MaskedCELoss  # type: ignore[import-not-found]
    from model import ComP  # type: ignore[import-not-found]

    torch.manual_seed(0)
    args = SimpleNamespace(device="cpu", drop_rate=DROPOUT, seq_len=LENGTH)
    model = ComP(
        args, *WIDTHS.values(), HIDDEN, n_classes=CLASSES, depth=DEPTH, num_heads=HEADS,
        drop_rate=DROPOUT, lbd=LBD,
    )  # fmt: skip
    model.eval()

    lengths = torch.tensor([12, 9, 5])  # one dialogue fills the padded length
    valid = torch.arange(LENGTH)[None, :] < lengths[:, None]  # [B, L]
    gen = torch.Generator().manual_seed(1)
    available = torch.rand(BATCH, LENGTH, 3, generator=gen) < 0.6
    available[..., 0] |= ~available.any(-1)  # at least one modality per utterance
    available[2, :, 1] = False  # a dialogue without text: all-masked attention rows
    available &= valid[..., None]
    features = {
        m: torch.randn(BATCH, LENGTH, d, generator=gen) * available[..., k : k + 1]
        for k, (m, d) in enumerate(WIDTHS.items())
    }
    labels = torch.randint(0, CLASSES, (BATCH, LENGTH), generator=gen) * valid

    # Released layout: features [L, B, sum d], availability [L, B, 3], umask [B, L].
    inputs = torch.cat(list(features.values()), dim=-1).transpose(0, 1)
    mask = available.long().transpose(0, 1).contiguous()
    umask = valid.float()
    ce, dis = MaskedCELoss(), DisentangledLoss()
    outputs, losses = {}, {}
    flat = labels.reshape(-1)
    with torch.no_grad():
        for stage, first in (("unimodal", True), ("multimodal", False)):
            res = model(inputs, labels, mask, umask, first_stage=first)
            _, out, out_a, out_t, out_v, _, proj, rec, shared, private, private_out = res
            outputs[stage] = {"fused": out, "a": out_a, "t": out_t, "v": out_v}

            def task(pred: torch.Tensor) -> torch.Tensor:
                return ce(pred.reshape(-1, CLASSES), flat, umask)

            d = HIDDEN
            pv = [private[..., i * d : (i + 1) * d] for i in range(3)]
            sv = [shared[..., i * d : (i + 1) * d] for i in range(3)]
            total = sum(
                dis.foward_2(pv[i], pv[j], sv[i], sv[j], umask)
                for i in range(3)
                for j in range(i + 1, 3)
            )
            heads = [out_a, out_t, out_v]
            if first:
                for i, h in enumerate(heads):
                    ph = private_out[..., i * CLASSES : (i + 1) * CLASSES]
                    total = total + task(h) + task(1 - ph)
            else:
                uni = sum(task(h) for h in heads)
                rec_loss = torch.nn.MSELoss()(rec, proj)
                total = total + task(out) + uni + rec_loss + uni
            losses[stage] = total

    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    torch.save(
        {
            "commit": commit or "28192d3a5683543d7383e40898f9a98d1f114a08",
            "config": {
                "widths": WIDTHS, "hidden": HIDDEN, "depth": DEPTH, "heads": HEADS,
                "classes": CLASSES, "length": LENGTH, "lbd": LBD, "dropout": DROPOUT,
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
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/comp-released")
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "comp_released.pt"
    target.parent.mkdir(exist_ok=True)
    main(source, target)
