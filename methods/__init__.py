"""Built-in methods, one file per family; importing a file registers its methods."""

from imerbench.methods import comp, fusion, gcnet, mctn, mmin, momke, sdrgnn, unimodal

__all__ = ["comp", "fusion", "gcnet", "mctn", "mmin", "momke", "sdrgnn", "unimodal"]
