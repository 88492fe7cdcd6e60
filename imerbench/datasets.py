"""Dataset ids, their aliases and facts, and `load_dataset`, the one way to get a corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imerbench.corpus import Corpus, Task
from imerbench.errors import ImerbenchError, unknown_name


@dataclass(frozen=True)
class DatasetInfo:
    """What the harness needs to know of a dataset before loading it."""

    id: str
    task: Task
    num_classes: int
    primary_metric: str
    profile: str  # which hyper-parameter profile methods use: iemocap | mosi | mosei | quick
    aliases: tuple[str, ...] = ()
    # GCNet layout only: folder and label pickle under the data root.
    folder: str = ""
    label_file: str = ""
    # The paper protocol trains on train + val where val is our own carve-out (IEMOCAP);
    # where val is an official split (MOSI/MOSEI) the released code trains on train only.
    paper_merges_val: bool = False
    num_folds: int = 1

    @property
    def synthetic(self) -> bool:
        return self.profile == "quick"


DATASETS: dict[str, DatasetInfo] = {
    d.id: d
    for d in [
        DatasetInfo(
            "iemocap4", "classification", 4, "wa", "iemocap", ("IEMOCAPFour",),
            "IEMOCAP", "IEMOCAP_features_raw_4way.pkl", paper_merges_val=True, num_folds=5,
        ),
        DatasetInfo(
            "iemocap6", "classification", 6, "wa", "iemocap", ("IEMOCAPSix",),
            "IEMOCAP", "IEMOCAP_features_raw_6way.pkl", paper_merges_val=True, num_folds=5,
        ),
        DatasetInfo(
            "mosi", "regression", 1, "f1", "mosi", ("CMUMOSI",),
            "CMUMOSI", "CMUMOSI_features_raw_2way.pkl",
        ),
        DatasetInfo(
            "mosei", "regression", 1, "f1", "mosei", ("CMUMOSEI",),
            "CMUMOSEI", "CMUMOSEI_features_raw_2way.pkl",
        ),
        DatasetInfo("synthetic", "classification", 4, "wa", "quick", paper_merges_val=True),
        DatasetInfo("synthetic-mosi", "regression", 1, "f1", "quick"),
    ]
}  # fmt: skip


def resolve_dataset(name: str) -> DatasetInfo:
    """The dataset for an id or a paper alias (case-insensitive)."""
    key = name.strip().lower()
    for info in DATASETS.values():
        if key == info.id or key in (a.lower() for a in info.aliases):
            return info
    raise unknown_name("dataset", name, list(DATASETS))


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    *,
    feature_names: dict[str, str] | None = None,
    missing_features: str = "refuse",
    widths: str = "small",
    use_cache: bool = True,
) -> Corpus:
    """Load a dataset by id: the synthetic ones are generated, the others read from `data_root`.

    `missing_features` is "refuse" (default: an utterance without a feature file is an error)
    or "mark" (it is kept, marked absent in the availability mask, never zero-filled as
    present). `widths` ("small" or "real") applies to the synthetic corpora only.
    """
    info = resolve_dataset(name)
    if info.synthetic:
        from imerbench.synthetic import make_synthetic

        return make_synthetic(info.id, widths=widths)
    if data_root is None:
        raise ImerbenchError(
            f"dataset '{info.id}' is read from disk: pass --data-root DIR, the folder that holds "
            f"{info.folder}/"
        )
    from imerbench.gcnet_layout import read_gcnet

    return read_gcnet(
        info,
        Path(data_root),
        feature_names=feature_names,
        missing_features=missing_features,
        use_cache=use_cache,
    )
