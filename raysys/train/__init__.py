"""Training loops: the single-process loop (`local`) and its learning-rate schedule (`schedule`)."""
