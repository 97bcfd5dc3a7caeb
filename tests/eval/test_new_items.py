"""The new-item boost: ID-less items' scores raised by a constant chosen on validation."""

from __future__ import annotations

import numpy as np
import torch

from raysys.config import EvalConfig, StudentConfig
from raysys.data.dataset import SplitExamples
from raysys.eval.new_items import choose_new_item_boost
from raysys.models.common import mark_id_less
from raysys.models.student import build_student

NUM_ITEMS, MAX_LEN = 40, 6
COLD = np.arange(30, 40)  # items 30..39 have no ID vector


def text_student() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_student(StudentConfig(use_text=True), NUM_ITEMS, MAX_LEN, text_emb=torch.randn(NUM_ITEMS, 8))
    id_less = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    id_less[COLD] = True
    mark_id_less(model.items, id_less)
    return model.eval()


def examples(targets: np.ndarray) -> SplitExamples:
    rng = np.random.default_rng(0)
    histories = [rng.integers(2, 30, size=4).astype(np.int32) for _ in targets]
    return SplitExamples(np.arange(len(targets), dtype=np.int32), histories, targets.astype(np.int32))


def test_the_boost_is_chosen_on_valid_when_new_items_are_valid_targets() -> None:
    model = text_student()
    valid = examples(np.resize(COLD, 60))  # every valid target is an ID-less item
    choice = choose_new_item_boost(model, valid, NUM_ITEMS, EvalConfig(ks=[10]), MAX_LEN)
    assert choice.value > 0 and choice.value in choice.valid
    assert choice.valid[choice.value] == max(choice.valid.values()) > choice.valid[0.0]
    assert "60 of 60 valid targets" in choice.reason
    assert model.items.new_item_boost == 0.0 and not model.training  # choosing sets nothing


def test_no_boost_without_new_items_among_valid_targets_or_without_id_less_items() -> None:
    model = text_student()
    choice = choose_new_item_boost(model, examples(np.arange(2, 30)), NUM_ITEMS, EvalConfig(ks=[10]), MAX_LEN)
    assert choice.value == 0.0 and choice.valid == {} and "no valid target" in choice.reason
    plain = build_student(StudentConfig(), NUM_ITEMS, MAX_LEN).eval()
    mark_id_less(plain.items)  # no text: nothing is ID-less
    choice = choose_new_item_boost(plain, examples(np.resize(COLD, 10)), NUM_ITEMS, EvalConfig(ks=[10]), MAX_LEN)
    assert choice.value == 0.0 and plain.items.id_less is None
