"""`load_dataset`, the one way to get a corpus: it dispatches on the dataset's source.

A dataset registered with its own loader is loaded by it; otherwise the "synthetic" source is
generated and the "gcnet" source read from the data root (`imerbench.data.catalog`).
"""

from __future__ import annotations

from pathlib import Path

from imerbench.data.catalog import GCNET, SYNTHETIC, LoadOptions, dataset_loader, resolve_dataset
from imerbench.data.corpus import Corpus
from imerbench.data.gcnet.reader import read_gcnet
from imerbench.data.synthetic.generator import make_synthetic
from imerbench.errors import ImerbenchError


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    *,
    feature_names: dict[str, str] | None = None,
    missing_features: str = "refuse",
    widths: str = "small",
    use_cache: bool = True,
) -> Corpus:
    """Load a dataset by id: the synthetic ones are generated, the others read from `data_root`
    (or loaded by the loader they were registered with).

    `feature_names` names the feature folder of some modalities (the others keep the papers'
    defaults). `missing_features` is "refuse" (default: an utterance without a feature file
    is an error) or "mark" (it is kept, marked absent in the availability mask, never
    zero-filled as present). `widths` ("small" or "real") applies to the synthetic corpora
    only.
    """
    info = resolve_dataset(name)
    loader = dataset_loader(info)
    if loader is not None:
        options = LoadOptions(
            feature_names=dict(feature_names) if feature_names else None,
            missing_features=missing_features,
            widths=widths,
            use_cache=use_cache,
        )
        corpus = loader(info, None if data_root is None else Path(data_root), options)
        _check_plugin_corpus(info.id, corpus, info.task, info.num_classes)
        return corpus
    if info.source == SYNTHETIC:
        return make_synthetic(info.id, widths=widths)
    if info.source != GCNET:  # the catalog refuses such an entry; kept for a clear message
        raise ImerbenchError(f"dataset '{info.id}' has source '{info.source}' and no loader")
    if data_root is None:
        raise ImerbenchError(
            f"dataset '{info.id}' is read from disk: pass --data-root DIR, the folder that holds "
            f"{info.folder}/"
        )
    return read_gcnet(
        info,
        Path(data_root),
        feature_names=feature_names,
        missing_features=missing_features,
        use_cache=use_cache,
    )


def _check_plugin_corpus(dataset: str, corpus: object, task: str, num_classes: int) -> None:
    """A plug-in's corpus must be the dataset its catalog entry describes."""
    if not isinstance(corpus, Corpus):
        raise ImerbenchError(
            f"the loader of dataset '{dataset}' returned a {type(corpus).__name__}, not a "
            "Corpus; fix the plug-in"
        )
    if corpus.name != dataset or corpus.task != task or corpus.num_classes != num_classes:
        raise ImerbenchError(
            f"the loader of dataset '{dataset}' returned corpus '{corpus.name}' ({corpus.task}, "
            f"{corpus.num_classes} classes), but the catalog says '{dataset}' ({task}, "
            f"{num_classes} classes); fix the plug-in"
        )
