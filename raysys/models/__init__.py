"""Sequence models: the HF teacher, the hand-written student, and what they share (see common.py)."""
