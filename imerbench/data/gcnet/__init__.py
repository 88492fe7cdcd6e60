"""Reading, checking and writing the "GCNet layout" that every IMER paper's data comes in.

A user who already has the features points imerbench at the folder unchanged, so this package
reads exactly what the published loaders read, but refuses what they silently paper over.

What the public GCNet loaders do (zeroQiaoba/GCNet, `gcnet/dataloader_iemocap.py` and
`gcnet/dataloader_cmumosi.py`, read for the convention only):

- A feature of utterance `u` is `features/<name>/u.npy` or a folder `features/<name>/u/`.
  A `.npy` array is squeezed, and a `[T, D]` array is mean-pooled over T.
- A folder holds face files. CMU-MOSI/MOSEI average all of them. IEMOCAP sorts each face file
  into speaker F if its file name contains the letter `F`, otherwise into M if it contains `M`
  (a name with neither is an error there), averages each group, and the model later takes the
  group of the utterance's own speaker (`qmask` 0 = F picks the "host" features). So an
  utterance's video feature is the mean of the face files of its speaker, and a face file
  whose name contains both letters counts as F.
- A missing `.npy` file or an empty speaker group becomes a zero vector, silently.

imerbench does the same, with these differences: a `.npy` file wins over a folder of the same
name; only `*.npy` files inside a face folder count; each face file is mean-pooled on its own
before faces are averaged; leading axes of size 1 are dropped (GCNet squeezes), but a
`[T, 1]` array stays a width-1 feature; and a missing file (or a speaker with no face files) is
counted and refused, or with `missing_features="mark"` kept as absent (`present` False), never
as a zero vector that looks real.

Anything else wrong is refused with one line that names the file and the value: an unreadable
or non-numeric file, a file whose width differs from the one most files of its folder have, an
id that cannot name a file (empty, unprintable, a slash or a leading dot), an IEMOCAP dialogue
or utterance id without its session digit (or an utterance from another session than its
dialogue), an empty dialogue, a label out of range, and an inconsistent label pickle. Parsed
features are cached only for a corpus that passed every check.

Order: dialogues in sorted id order (as GCNet's IEMOCAP loader; its MOSI loader orders by split,
which no result depends on); utterances in `videoIDs` order within each dialogue.

IEMOCAP's conventions (session digits, folds by session, faces sorted by speaker) apply to the
datasets whose catalog entry says so (`session_folds`, `faces_by_speaker` in
`imerbench/data/catalog.py`), never to a folder name.

Modules: `labels.py` (the label pickle), `features.py` (the feature files), `cache.py`,
`reader.py`, `writer.py`, `check.py` (`imerbench data check`), `messages.py`.
"""

from __future__ import annotations

from imerbench.data.gcnet.cache import feature_cache_dir
from imerbench.data.gcnet.check import DataReport, DatasetReport, FeatureReport, check_data_root
from imerbench.data.gcnet.reader import MISSING_FEATURE_MODES, read_gcnet
from imerbench.data.gcnet.writer import write_gcnet

__all__ = [
    "MISSING_FEATURE_MODES",
    "DataReport",
    "DatasetReport",
    "FeatureReport",
    "check_data_root",
    "feature_cache_dir",
    "read_gcnet",
    "write_gcnet",
]
