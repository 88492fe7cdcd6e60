"""Write `tests/data/imder_released.pt`: IMDer's released sampler and score-matching loss on a
fixed score function, with their random draws seeded.

Needs a checkout of the released code (mdswyz/IMDer 1901a92) and what its import chain pulls
in, e.g.
    git clone https://github.com/mdswyz/IMDer /tmp/IMDer
    pip install torch==2.13.0 transformers scipy scikit-learn pynvml
    python benchmarks/tools/imder_released_fixture.py /tmp/IMDer
It imports the released `trains/singleTask/model/scoremodel.py` (`loss_fn`,
`Euler_Maruyama_sampler`) and the SDE functions of `imder.py` and calls them (their module
constant `device` set to the CPU); nothing of them is copied here. The released score network
(a U-Net) cannot run at sequence length 1, so both functions get the closed-form score below,
which the test gives ours too. The sampler's initial noise is hard-coded to [B, 32, 48]:
the fixture uses that shape.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

STEPS, BATCH = 5, 2


def score(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for a score network: pulls x towards half the condition."""
    return -(x - 0.5 * condition) / (1.0 + t[:, None, None])


def main(root: Path, target: Path) -> None:
    sys.path.insert(0, str(root))
    from trains.singleTask.model import imder, scoremodel  # type: ignore[import-not-found]

    imder.device = "cpu"
    std = functools.partial(imder.marginal_prob_std, sigma=25.0)
    coeff = functools.partial(imder.diffusion_coeff, sigma=25.0)
    gen = torch.Generator().manual_seed(0)
    condition = torch.randn(BATCH, 32, 48, generator=gen)
    x = torch.randn(BATCH, 32, 48, generator=gen)
    torch.manual_seed(1)
    loss = scoremodel.loss_fn(score, x, std, condition=condition)
    torch.manual_seed(2)
    samples = scoremodel.Euler_Maruyama_sampler(
        score, std, coeff, BATCH, num_steps=STEPS, device="cpu", condition=condition
    )
    torch.save(
        {
            "commit": "1901a92",
            "steps": STEPS,
            "condition": condition,
            "x": x,
            "loss": loss,
            "samples": samples,
            "std": std(torch.tensor([0.3, 1.0])),
        },
        target,
    )
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "imder_released.pt"
    main(source, target)
