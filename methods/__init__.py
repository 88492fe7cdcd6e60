"""Built-in methods, one file per family; importing a file registers its methods."""

from imerbench.methods import fusion, unimodal

__all__ = ["fusion", "unimodal"]
