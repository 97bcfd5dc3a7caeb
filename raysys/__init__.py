"""raysys: train, tune and serve self-supervised sequential recommenders on Ray."""

__version__ = "0.1.0"
