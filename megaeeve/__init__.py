"""megaeeve: teach an English causal LM a new language by growing its vocabulary (EEVE)."""

__version__ = "0.1.0"
