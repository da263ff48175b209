"""surgery: a declarative model-surgery language and its compiler for growing transformers."""

__version__ = "0.1.0"
