"""Built-in methods, one file per family; importing a file registers its methods."""

from imerbench.methods import (
    comp,
    dicmor,
    fusion,
    gcnet,
    imder,
    mctn,
    mmin,
    momke,
    sdrgnn,
    unimodal,
)

__all__ = [
    "comp",
    "dicmor",
    "fusion",
    "gcnet",
    "imder",
    "mctn",
    "mmin",
    "momke",
    "sdrgnn",
    "unimodal",
]
