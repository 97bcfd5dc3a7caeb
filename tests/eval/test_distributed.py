"""The same data evaluated in-process, on 1 and on 2 Ray Train workers gives the same metrics:
each worker scores its shard and the sums are all-reduced once (no user counted twice)."""

from __future__ import annotations

from functools import partial

import pytest

from raysys.config import EvalConfig
from raysys.eval.baselines import build_baseline
from raysys.eval.distributed import evaluate_on_ray
from raysys.eval.evaluator import evaluate_dataset


@pytest.mark.slow
def test_one_and_two_ray_train_workers_agree(ray_session, make_dataset, random_sequences, tmp_path, evaluated_parts):
    dataset = make_dataset(random_sequences(0, num_users=101, num_items=40, max_length=15), 40)
    # Small batches so every worker runs several; sampled negatives and coverage must merge too.
    cfg = EvalConfig(ks=[5, 10], batch_size=16, sampled_negatives=8, short_history_max=6)
    scorers = partial(build_baseline, "itemknn", dataset)
    local = evaluate_dataset(scorers, dataset, cfg, 8)
    # sync=True: a worker without a process group fails instead of quietly evaluating everything.
    evaluate = partial(evaluate_dataset, scorers, dataset, cfg, 8, sync=True)
    one = evaluate_on_ray(evaluate, num_workers=1, cpus_per_worker=0.5, storage_path=tmp_path, name="one")
    two = evaluate_on_ray(evaluate, num_workers=2, cpus_per_worker=0.5, storage_path=tmp_path, name="two")
    assert set(two) == set(local) == evaluated_parts
    for part in local:
        assert one[part] == pytest.approx(local[part], abs=1e-12)
        assert two[part] == pytest.approx(local[part], abs=1e-12)
        assert two[part]["num_users"] == local[part]["num_users"]
    assert local["test"]["num_users"] == len(dataset.split("test").targets)
    assert local["test/short_history"]["num_users"] > 0 and local["test"]["coverage@10"] > 0
