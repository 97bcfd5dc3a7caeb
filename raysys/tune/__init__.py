"""Hyper-parameter search on Ray Tune: the search space (space), the trials (trainable), the
searchers and schedulers (search), and what a search writes for people (results)."""
