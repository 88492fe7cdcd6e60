"""MCTN (Pham, Liang et al., AAAI 2019; released code hainow/MCTN 5c03e35, Keras):
hierarchical cyclic translation from the source modality, text.

The released model translates word sequences: a bidirectional LSTM encoder (32, directions
summed) and an attention decoder translate text into audio (COVAREP); the SAME encoder and
decoder translate the translation back into text (the cycle); a second bidirectional LSTM
over the first encoder's states and its decoder translate into video (FACET); an LSTM (32)
with attention pooling over the second encoder's states and a Dense layer (L2 0.01) give the
prediction. Loss = 0.1 MSE(translation 1) + 0.1 MSE(cycle) + 0.1 MSE(translation 2) + the
task loss (MAE for MOSI; cross-entropy here for classes). Only the source is needed to
predict: the other modalities are training targets.

Adaptation to the GCNet layout (the ComP paper copies MCTN's rows from other papers, with
other features: `imerbench table --paper` marks ours as an adaptation):
- an utterance's feature vector is a sequence of length 1 (the released code reads 20 words
  of one utterance; there is no dialogue context in either). At length 1 every recurrence
  starts from the zero state and runs one step, and attention over one position is the
  identity: an LSTM step is then i, g, o = Wx + b (its forget gate and recurrent weights
  never act; the decoders' b is the sum of the released W1 and U biases), c = hs(i) tanh(g),
  h = hs(o) tanh(c), with the released gate activation hs, Keras's hard sigmoid
  clip(0.2 x + 0.5, 0, 1). This module builds exactly those weights (`ZeroStateStep`); the
  attention energies and the recurrent weights of the released cells, which would receive
  no gradient, are not built;
- the released decoder cell computes its forget gate from the input gate's slice (a quirk);
  from the zero state the forget gate multiplies nothing, so it has no effect here;
- as released, every modality is zero-padded to one width (here the widest modality's;
  300 in the released code), the decoders end in tanh (the released COVAREP features are not
  normalised, so a tanh cannot reach them: kept), and the translation MSEs average over the
  padded width too;
- the translation and cycle losses count the utterances where their target (audio, video;
  for the cycle, the text) is present in the training batch, never the values the mask hides;
  a missing source is zeros, and the model then predicts from nothing but its biases (as
  released, MCTN cannot use audio or video at test time);
- the task loss is the MAE for regression (the released loss, not the harness's MSE) and
  cross-entropy for classes; the L2 term is 0.01 times the squared norm of the final Dense
  kernel, as Keras adds it to the loss;
- the released code predicts with the last epoch's weights and its split is its own (the
  first 2/3 of the videos by id); here the harness's folds, stopping and selection apply.
`tests/test_mctn.py` copies the weights of a released model (Keras 2.2.4 on TensorFlow 1.15,
recurrentshop bd3a7e2; `benchmarks/tools/mctn_released_fixture.py`) into ours and compares
the translations, the cycle, the prediction and the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.losses import masked_mean
from imerbench.method import DataSpec, Method, ModelOutput, Param
from imerbench.registry import register_method

ORDER = ("t", "a", "v")  # source, first target (COVAREP), second target (FACET)
# The released end2end_trimodal.py settings (configs/hierarchical_mctn.yaml, README).
PUBLISHED = {"epochs": 200, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0, "patience": 20}


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras 2.2's gate activation, the default of recurrentshop's cells and of Keras's LSTM
    (torch's `hardsigmoid` has slope 1/6, not 0.2)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


class ZeroStateStep(nn.Module):
    """One LSTM step from the zero state: the input, candidate and output gates of Wx + b."""

    def __init__(self, dim_in: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Linear(dim_in, 3 * hidden)

    def forward(self, x: Tensor) -> Tensor:
        i, g, o = self.gates(x).chunk(3, dim=-1)
        return hard_sigmoid(o) * torch.tanh(hard_sigmoid(i) * torch.tanh(g))


class Encoder(nn.Module):
    """A bidirectional LSTM over a length-1 sequence, directions summed."""

    def __init__(self, dim_in: int, hidden: int) -> None:
        super().__init__()
        self.forward_step = ZeroStateStep(dim_in, hidden)
        self.backward_step = ZeroStateStep(dim_in, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_step(x) + self.backward_step(x)


class Decoder(nn.Module):
    """The attention decoder's one step over one encoded position: tanh(W2 h)."""

    def __init__(self, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.step = ZeroStateStep(hidden, hidden)
        self.out = nn.Linear(hidden, dim_out)

    def forward(self, encoded: Tensor) -> Tensor:
        return torch.tanh(self.out(self.step(encoded)))


class MCTNNet(nn.Module):
    """Text -> (audio, and back to text) -> video translations; the second encoder's state
    predicts."""

    def __init__(self, spec: DataSpec, hidden: int, head_hidden: int) -> None:
        super().__init__()
        self.width = max(spec.widths.values())  # every modality zero-padded to one width
        self.encoder1 = Encoder(self.width, hidden)
        self.decoder1 = Decoder(hidden, self.width)
        self.encoder2 = Encoder(hidden, hidden)
        self.decoder2 = Decoder(hidden, self.width)
        self.head_step = ZeroStateStep(hidden, head_hidden)
        self.head = nn.Linear(head_hidden, spec.num_classes)

    def padded(self, batch: Batch, m: str) -> Tensor:
        """Modality m zero-padded to the common width, zero where missing."""
        k = MODALITIES.index(m)
        keep = (batch.available[..., k] & batch.valid)[..., None]
        x = torch.where(keep, batch.features[m], torch.zeros_like(batch.features[m]))
        return F.pad(x, (0, self.width - x.shape[-1]))

    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        source = self.padded(batch, ORDER[0])  # [B, L, P]
        encoded = self.encoder1(source)  # [B, L, H]
        encoded2 = self.encoder2(encoded)
        fused = self.head(self.head_step(encoded2))  # attention over one position: itself
        extras: dict[str, Tensor] = {}
        if self.training:
            translated = self.decoder1(encoded)
            extras = {
                "translated": translated,
                "cycled": self.decoder1(self.encoder1(translated)),
                "translated2": self.decoder2(encoded2),
            }
        return ModelOutput(fused=fused, extras=extras)


def translation_loss(pred: Tensor, target: Tensor, present: Tensor) -> Tensor:
    """MSE over every (padded) dimension, averaged over the utterances where the target is
    present. pred, target: [B, L, P]; present: [B, L] bool."""
    err = torch.where(present[..., None], pred - target, torch.zeros_like(pred))
    return masked_mean((err**2).mean(-1), present)


@register_method("mctn", paper_name="MCTN")
class MCTN(Method):
    """Hierarchical cyclic translation from text (MCTN); only the text is needed to predict."""

    params = {
        "hidden": Param(32, low=1, help="encoder and decoder width"),
        "head_hidden": Param(32, low=1, help="the prediction LSTM's width"),
        "translation_weight": Param(0.1, low=0.0, help="each translation MSE's weight"),
        "cycle_weight": Param(0.1, low=0.0, help="the cycle MSE's weight"),
        "l2": Param(0.01, low=0.0, help="L2 factor on the final Dense kernel"),
    }
    profiles = {
        # A few Linear layers per utterance: cheap; a higher learning rate than the released
        # 1e-4 so that the quick grid's short runs learn.
        "quick": {"epochs": 40, "batch_size": 16, "lr": 1e-2},
        "iemocap": PUBLISHED,
        "mosi": PUBLISHED,
        "mosei": PUBLISHED,
    }
    stackable = True
    model = MCTNNet

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        assert isinstance(model, MCTNNet)
        present = {m: batch.available[..., MODALITIES.index(m)] & batch.valid for m in ORDER}
        source, first, second = (model.padded(batch, m) for m in ORDER)
        translation = translation_loss(out.extras["translated"], first, present[ORDER[1]])
        translation2 = translation_loss(out.extras["translated2"], second, present[ORDER[2]])
        cycle = translation_loss(out.extras["cycled"], source, present[ORDER[0]])
        if batch.labels.dtype.is_floating_point:  # the released MAE
            task = masked_mean((out.fused.squeeze(-1) - batch.labels).abs(), batch.valid)
        else:
            per_utt = F.cross_entropy(
                out.fused.flatten(0, 1), batch.labels.flatten(), reduction="none"
            )
            task = masked_mean(per_utt.view_as(batch.valid), batch.valid)
        hp = self.hp
        return (
            task
            + hp["translation_weight"] * (translation + translation2)
            + hp["cycle_weight"] * cycle
            + hp["l2"] * model.head.weight.square().sum()
        )
