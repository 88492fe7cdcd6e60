"""Built-in methods, one file per family; importing a file registers its methods."""

from imerbench.methods import comp, fusion, gcnet, mmin, momke, unimodal

__all__ = ["comp", "fusion", "gcnet", "mmin", "momke", "unimodal"]
