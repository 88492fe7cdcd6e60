"""Write `tests/data/dicmor_released.pt`: a tiny released DiCMoR model run at sequence length 1,
its outputs, NLL and reconstruction terms under each missing pattern.

Needs a checkout of the released code (mdswyz/DiCMoR 3d7e617) and what its import chain
pulls in (`transformers`: its text encoder, not used here, `use_bert` is off), e.g.
    git clone https://github.com/mdswyz/DiCMoR /tmp/DiCMoR
    pip install torch==2.13.0 transformers scipy scikit-learn pynvml
    python benchmarks/tools/dicmor_released_fixture.py /tmp/DiCMoR
It imports the released `trains/singleTask/model/dicmor.py` (and its glow, rcan and
transformer modules) and calls them; nothing of them is copied here. The model is built
small, through the same classes, by changing three constants the released code hard-codes:
2 couplings per flow (released 32), coupling networks 8 wide (64), 2 channel-attention blocks
per refinement (20). The loss is composed as
`trains/singleTask/DICMOR.py` does: L1 + 0.1 (NLL_l + NLL_v + NLL_a + reconstruction).
"""

from __future__ import annotations

import functools
import random
import sys
import types
from pathlib import Path

import torch

WIDTHS = {"t": 7, "a": 5, "v": 6}  # the released (text, audio, video) feature widths
DIM, HEADS, LEVELS, UTTERANCES = 8, 2, 1, 6
FLOWS, FILTER, BLOCKS = 2, 8, 2


def main(root: Path, target: Path) -> None:
    sys.path.insert(0, str(root))
    from trains.singleTask.model import dicmor, glow  # type: ignore[import-not-found]

    dicmor.Glow = lambda in_channel, n_flow, n_block, affine, conv_lu: glow.Glow(
        in_channel, FLOWS, n_block, affine=affine, conv_lu=conv_lu
    )
    glow.AffineCoupling = functools.partial(glow.AffineCoupling, filter_size=FILTER)
    group = dicmor.Group
    dicmor.Group = lambda num_channels, num_blocks, reduction: group(
        num_channels=num_channels, num_blocks=BLOCKS, reduction=reduction
    )
    torch.manual_seed(0)
    args = types.SimpleNamespace(
        use_bert=False, dst_feature_dim_nheads=(DIM, HEADS),
        feature_dims=(WIDTHS["t"], WIDTHS["a"], WIDTHS["v"]), nlevels=LEVELS,
        attn_dropout=0.3, attn_dropout_a=0.2, attn_dropout_v=0.0, relu_dropout=0.0,
        embed_dropout=0.2, res_dropout=0.0, output_dropout=0.5, text_dropout=0.5,
        attn_mask=True, train_mode="regression", num_classes=1, conv1d_kernel_size_l=1,
        conv1d_kernel_size_a=1, conv1d_kernel_size_v=1,
    )  # fmt: skip
    model = dicmor.DICMOR(args)
    model.eval()

    gen = torch.Generator().manual_seed(1)
    features = {m: torch.randn(UTTERANCES, 1, d, generator=gen) for m, d in WIDTHS.items()}
    labels = torch.tensor([-3.0, -1.4, 0.0, 0.6, 2.5, 1.5]).view(-1, 1)
    runs, seen = [], set()
    with torch.no_grad():
        for num_modal, seed in [(3, 0)] + [(n, k) for n in (2, 1) for k in range(20)]:
            random.seed(seed)  # which modalities the released forward keeps
            if tuple(sorted(random.sample([0, 1, 2], num_modal))) in seen:
                continue  # every pattern once
            random.seed(seed)
            res = model(features["t"], features["a"], features["v"], labels, num_modal=num_modal)
            seen.add(tuple(sorted(res["ava_modal_idx"])))
            nll = [res[f"log_p_{m}"].reshape(()) for m in "lva"]
            rec = torch.as_tensor(res["loss_rec"], dtype=torch.float32)
            loss = torch.nn.L1Loss()(res["M"], labels) + 0.1 * (sum(nll) + rec)
            available = sorted(res["ava_modal_idx"])  # 0: text, 1: video, 2: audio
            runs.append({"available": available, "M": res["M"], "loss": loss, "rec": rec})
    torch.save(
        {
            "commit": "3d7e617",
            "config": {
                "widths": WIDTHS, "dim": DIM, "heads": HEADS, "layers": LEVELS,
                "flow_steps": FLOWS, "coupling_hidden": FILTER, "refine_blocks": BLOCKS,
                "refine_reduction": 16,
            },
            "state_dict": model.state_dict(),
            "features": {m: x[:, 0] for m, x in features.items()},
            "labels": labels[:, 0],
            "runs": runs,
        },
        target,
    )  # fmt: skip
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "dicmor_released.pt"
    main(source, target)
