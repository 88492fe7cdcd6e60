"""Write `tests/data/mctn_released.npz`: a tiny released hierarchical MCTN (Keras), a batch at
sequence length 1, its four outputs, its losses and its weights.

The released code (hainow/MCTN 5c03e35) needs Keras 2.2 on TensorFlow 1 and recurrentshop
(farizrahman4u/recurrentshop bd3a7e2, not on PyPI), so this script runs under Python 3.7:
    python3.7 -m venv /tmp/mctnvenv
    /tmp/mctnvenv/bin/pip install tensorflow==1.15.5 keras==2.2.4 'h5py<3' protobuf==3.20.3 \
        'numpy<1.19' pyyaml /path/to/recurrentshop
    PYTHONPATH=/path/to/MCTN:/path/to/MCTN/models \
        /tmp/mctnvenv/bin/python benchmarks/tools/mctn_released_fixture.py
It builds the released `E2E_Hierarchical_MCTN_Model` (models/trimodals.py) from a small
configuration shaped as configs/hierarchical_mctn.yaml and calls its Keras model; nothing of
it is copied here. Only numpy is needed to read the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

WIDTH, HIDDEN1, HIDDEN2, HEAD, BATCH = 6, 5, 5, 3, 7


def main(target: Path) -> None:
    from trimodals import E2E_Hierarchical_MCTN_Model  # type: ignore[import-not-found]

    rng = np.random.RandomState(0)
    text, audio, video = (rng.randn(BATCH, 1, WIDTH).astype("float32") for _ in range(3))
    labels = rng.randn(BATCH, 1).astype("float32")
    configs = {
        "translation1": {
            "is_bidirectional": 1, "hidden_dim": HIDDEN1, "depth": (1, 1),
            "loss_type": "mse", "loss_weight": 0.1, "is_cycled": 1,
            "cycle_loss_type": "mse", "cycle_loss_weight": 0.1,
        },
        "translation2": {
            "is_bidirectional": 1, "hidden_dim": HIDDEN2, "depth": (1, 1),
            "loss_type": "mse", "loss_weight": 0.1,
        },
        "regression": {"reg_hidden_dim": HEAD, "l2_factor": 0.01, "loss_type": "mae",
                       "loss_weight": 1.0},
        "general": {"optim": "adam", "init_lr": 1e-4},
    }  # fmt: skip
    feats = {
        "t": (text, text, "text"),
        "a": (audio, audio, "covarep"),
        "v": (video, video, "facet"),
        "train_labels": labels,
        "test_labels": labels,
    }
    released = E2E_Hierarchical_MCTN_Model(configs, ["t", "a", "v"], feats)
    model = released.model
    # Keras initialises biases to zero (forget biases to one): draw every weight so that
    # each one changes the outputs.
    weights = [rng.randn(*w.shape).astype("float32") * 0.5 for w in model.get_weights()]
    model.set_weights(weights)
    decoded, cycled, decoded2, score = model.predict(text, batch_size=BATCH)
    losses = model.evaluate(text, [audio, text, video, labels], batch_size=BATCH, verbose=0)
    out = {
        "text": text, "audio": audio, "video": video, "labels": labels,
        "decoded": decoded, "cycled": cycled, "decoded2": decoded2, "score": score,
        "loss": np.float32(losses[0]),
        "hidden": np.array([HIDDEN1, HIDDEN2, HEAD]),
    }  # fmt: skip
    for k, w in enumerate(model.weights):  # Python 3.7: no zip(strict=)
        out[f"w{k:02d} {w.name}"] = weights[k]
    np.savez_compressed(str(target), **out)
    print("wrote", target, "losses", losses)


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "tests" / "data" / "mctn_released.npz"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
