"""Write `tests/data/mmin_released.pt`: tiny networks of MMIN's utterance-level port, a batch,
their outputs and the port's training loss.

Needs the port's networks folder (zeroQiaoba/GCNet 8cce4a0, `baseline-mmin/models/networks`:
`classifier.py`, `autoencoder.py`), e.g.
    git clone https://github.com/zeroQiaoba/GCNet /tmp/GCNet
    python benchmarks/tools/mmin_released_fixture.py /tmp/GCNet/baseline-mmin/models/networks
It imports the port's `FcClassifier` and `ResidualAE` and calls them; nothing of them is
copied here. The port's model class needs a trained teacher checkpoint and its option
objects, so the fixture builds the same networks directly and composes the student's forward
pass and loss as `baseline-mmin/models/mmin_model.py` does (forward, backward): encoders on the
zero-filled inputs, concatenated a, l, v into the imagination autoencoder, its latents into the
classifier, the cycle autoencoder on the imagination; loss = CE + 4 MSE(teacher embeddings of
the "reverse" inputs, imagination) + 2 MSE(detached embeddings, cycle).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

WIDTHS = {"a": 6, "t": 8, "v": 5}
EMBED, CLS_LAYERS, AE_LAYERS, BLOCKS, CLASSES, DROPOUT = 4, [6, 5], [7, 5, 3], 2, 3, 0.5
UTTERANCES = 8
IMAGINATION_WEIGHT, CYCLE_WEIGHT = 4.0, 2.0
PORT = {"a": "A", "t": "L", "v": "V"}  # the port's network letters


def main(networks: Path, target: Path) -> None:
    sys.path.insert(0, str(networks))
    from autoencoder import ResidualAE  # type: ignore[import-not-found]
    from classifier import FcClassifier  # type: ignore[import-not-found]

    torch.manual_seed(0)
    nets = {}
    for prefix in ("teacher_", ""):
        for m, d in WIDTHS.items():
            nets[f"{prefix}net{PORT[m]}"] = FcClassifier(
                d, list(CLS_LAYERS), EMBED, dropout=DROPOUT
            )
    nets["teacher_netC"] = FcClassifier(3 * EMBED, list(CLS_LAYERS), CLASSES, dropout=DROPOUT)
    nets["netAE"] = ResidualAE(list(AE_LAYERS), BLOCKS, 3 * EMBED, dropout=0, use_bn=False)
    nets["netAE_cycle"] = ResidualAE(list(AE_LAYERS), BLOCKS, 3 * EMBED, dropout=0, use_bn=False)
    nets["netC"] = FcClassifier(AE_LAYERS[-1] * BLOCKS, list(CLS_LAYERS), CLASSES, dropout=DROPOUT)
    for net in nets.values():
        net.eval()

    gen = torch.Generator().manual_seed(1)
    available = torch.rand(UTTERANCES, 3, generator=gen) < 0.6
    available[:, 1] |= ~available.any(-1)
    available[0] = True  # one complete utterance
    full = {m: torch.randn(UTTERANCES, d, generator=gen) for m, d in WIDTHS.items()}
    labels = torch.randint(0, CLASSES, (UTTERANCES,), generator=gen)
    keep = {m: available[:, k : k + 1].float() for k, m in enumerate(WIDTHS)}
    with torch.no_grad():
        embedded = torch.cat([nets[f"net{PORT[m]}"](full[m] * keep[m])[0] for m in WIDTHS], -1)
        imagined, latent = nets["netAE"](embedded)
        cycled, _ = nets["netAE_cycle"](imagined)
        logits = nets["netC"](latent)[0]
        reverse = {m: full[m] * (1 - keep[m]) for m in WIDTHS}
        targets = torch.cat([nets[f"teacher_net{PORT[m]}"](reverse[m])[0] for m in WIDTHS], -1)
        teacher_logits = nets["teacher_netC"](
            torch.cat([nets[f"teacher_net{PORT[m]}"](full[m])[0] for m in WIDTHS], -1)
        )[0]
        mse = torch.nn.MSELoss()
        loss = (
            torch.nn.CrossEntropyLoss()(logits, labels)
            + IMAGINATION_WEIGHT * mse(targets, imagined)
            + CYCLE_WEIGHT * mse(embedded, cycled)
        )
    torch.save(
        {
            "commit": "8cce4a0",
            "config": {
                "widths": WIDTHS, "embed": EMBED, "cls_layers": CLS_LAYERS,
                "ae_layers": AE_LAYERS, "blocks": BLOCKS, "classes": CLASSES,
                "dropout": DROPOUT, "imagination_weight": IMAGINATION_WEIGHT,
                "cycle_weight": CYCLE_WEIGHT,
            },
            "state_dicts": {name: net.state_dict() for name, net in nets.items()},
            "features": full,
            "available": available,
            "labels": labels,
            "outputs": {"fused": logits, "teacher": teacher_logits, "imagined": imagined},
            "loss": loss,
        },
        target,
    )  # fmt: skip
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "mmin_released.pt"
    main(source, target)
