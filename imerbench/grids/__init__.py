"""Built-in grid files (package data); `quick.toml` is what `imerbench run` runs by default."""
