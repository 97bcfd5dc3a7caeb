"""In-process serving pieces (no Ray): batch scoring vs the offline model, added items, the live
store, the request schemas, and the Serve config the CLI and jobs/configs/serve.yaml deploy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from raysys.config import ServeConfig
from raysys.errors import RaysysError
from raysys.models.common import mark_id_less
from raysys.models.export import load_model_dir
from raysys.serve.deploy import serve_config
from raysys.serve.schemas import RecommendRequest
from raysys.serve.scoring import Query, ServingModel

ROOT = Path(__file__).resolve().parents[2]


def queries_for(histories: dict[str, list[str]]) -> list[Query]:
    user_history = histories["u3"]
    return [
        Query(user_history, 10),
        Query(["i5", "not-an-item", "i7"], 5, exclude=["i9", "i11"]),
        Query(user_history, 1000),  # clipped to the catalog minus the seen items
        Query(user_history[-3:], 7, exclude_seen=False),
        Query([], 4),  # cold start
        Query(["nope", "neither"], 3, exclude=["i0"]),  # all unknown: cold start too
    ]


def test_batch_scoring_matches_a_brute_force_ranking(model_dirs: dict[str, Path], brute_force) -> None:
    loaded = load_model_dir(model_dirs["text"])
    served = ServingModel(loaded)
    queries = queries_for(loaded.user_histories)
    results = served.predict(queries)
    for query, result in zip(queries, results, strict=True):
        expected, fell_back = brute_force(
            loaded, list(query.history), query.k, query.exclude_seen, tuple(query.exclude)
        )
        assert [i for i, _ in result.items] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in result.items], [s for _, s in expected], atol=1e-4)
        assert result.fallback == ("popularity" if fell_back else None)
    assert len(results[2].items) == 200 - len(set(queries[2].history))
    assert results[1].unknown_items == ["not-an-item"]
    assert results[5].unknown_items == ["nope", "neither"]
    assert results[4].items[0][1] >= results[4].items[-1][1]  # most popular first


def test_added_items_are_scored_by_the_text_projection(model_dirs: dict[str, Path]) -> None:
    served = ServingModel.load(str(model_dirs["text"]))
    emb = np.random.default_rng(0).normal(size=384).astype(np.float32)
    assert served.add_items([("fresh", emb), ("i3", emb)]) == ["fresh"]  # i3 is a known item: skipped
    assert served.catalog.size == 201 and served.added_items == 1
    history = ["i1", "i2", "i4"]
    result = served.predict([Query(history, 1000)])[0]
    scores = dict(result.items)
    with torch.inference_mode():
        ids = torch.tensor([[served.catalog.index[i] for i in history]])
        state = served.model.user_state(ids)[0]
        expected = float(state @ served.model.items.text_projection(torch.from_numpy(emb)))
    assert scores["fresh"] == pytest.approx(expected, abs=1e-4)
    # An added item in a history counts as seen, though the model cannot take it as input.
    assert "fresh" not in dict(served.predict([Query([*history, "fresh"], 1000)])[0].items)
    assert served.add_items([("fresh", emb)]) == []


def test_id_less_and_added_items_take_the_new_item_boost_as_in_evaluation(model_dirs: dict[str, Path]) -> None:
    loaded = load_model_dir(model_dirs["text"])
    items = loaded.model.items
    with torch.no_grad():
        items.id_embedding.weight[loaded.item_index["i3"]] = 0.0  # as training pins an item it never saw
    mark_id_less(items)
    items.new_item_boost = 0.75
    served = ServingModel(loaded)
    emb = np.random.default_rng(1).normal(size=384).astype(np.float32)
    assert served.add_items([("fresh", emb)]) == ["fresh"]
    history = ["i1", "i2", "i4"]
    scores = dict(served.predict([Query(history, 1000)])[0].items)
    with torch.inference_mode():
        ids = torch.tensor([[loaded.item_index[i] for i in history]])
        offline = loaded.model.next_item_scores(ids)[0]  # [num_items], what evaluation ranks
        fresh = float(loaded.model.user_state(ids)[0] @ items.text_projection(torch.from_numpy(emb))) + 0.75
    assert scores["i3"] == pytest.approx(float(offline[loaded.item_index["i3"]]), abs=1e-4)
    assert scores["i5"] == pytest.approx(float(offline[loaded.item_index["i5"]]), abs=1e-4)
    assert scores["fresh"] == pytest.approx(fresh, abs=1e-4)
    assert served.catalog.boost.nonzero().flatten().tolist() == [loaded.item_index["i3"], served.catalog.index["fresh"]]


def test_a_model_without_text_cannot_add_items(model_dirs: dict[str, Path]) -> None:
    served = ServingModel.load(str(model_dirs["plain"]))
    with pytest.raises(ValueError, match="no text tower"):
        served.add_items([("fresh", np.zeros(384, np.float32))])


def test_int8_model_ranks_close_to_float_and_still_adds_items(model_dirs: dict[str, Path]) -> None:
    full, int8 = ServingModel.load(str(model_dirs["text"])), ServingModel.load(str(model_dirs["text"]), int8=True)
    quantized = [m for m in int8.model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    assert quantized
    assert int8.model.items.text_projection.weight.dtype == torch.float32
    queries = [Query(history, 10) for history in list(int8.user_histories.values())[:20]]
    overlap = [
        len({i for i, _ in a.items} & {i for i, _ in b.items}) / 10
        for a, b in zip(full.predict(queries), int8.predict(queries), strict=True)
    ]
    assert np.mean(overlap) > 0.7
    assert int8.add_items([("fresh", np.ones(384, np.float32))]) == ["fresh"]


def test_exclude_seen_covers_the_whole_history_not_only_what_the_model_reads(model_dirs: dict[str, Path]) -> None:
    served = ServingModel.load(str(model_dirs["text"]))
    catalog = [i for i in served.catalog.item_ids if i]
    history = catalog[:-15]  # all but 15 items, far more than the model reads
    (result,) = served.predict([Query(history, k=30, max_inputs=5)])
    returned = [item for item, _ in result.items]
    assert sorted(returned) == sorted(catalog[-15:])  # only the unseen 15 are left to recommend
    (unexcluded,) = served.predict([Query(history, k=30, exclude_seen=False, max_inputs=5)])
    assert len(unexcluded.items) == 30


def test_a_user_history_is_the_stored_one_plus_live_events_capped(model_dirs: dict[str, Path]) -> None:
    from raysys.serve.app import Recommender
    from raysys.serve.state import LiveSnapshot

    served = ServingModel.load(str(model_dirs["text"]))
    stored = served.user_histories["u2"]
    snapshot = LiveSnapshot(events={"u2": ["i7", "i8"]})
    build = Recommender.func_or_class._query  # what a replica does per request
    query = build(RecommendRequest(user_id="u2", k=3), served, snapshot, max_history=1000)
    assert list(query.history) == [*stored, "i7", "i8"] and query.k == 3
    capped = build(RecommendRequest(user_id="u2"), served, snapshot, max_history=4)
    assert list(capped.history) == [*stored, "i7", "i8"] and capped.max_inputs == 4  # the model reads 4
    explicit = build(RecommendRequest(user_id="u2", history=["i1"]), served, snapshot, max_history=1000)
    assert list(explicit.history) == ["i1"]  # an explicit history wins
    assert list(build(RecommendRequest(user_id="new"), served, snapshot, max_history=1000).history) == []


@pytest.mark.parametrize(
    "body",
    [
        {"history": ["1"], "k": 0},
        {"history": ["1"], "k": 1001},
        {"history": ["1"], "k": "5"},
        {"history": ["1"], "k": 5.0},
        {"history": ["1"], "k": float("nan")},
        {"history": [1.5]},
        {"history": [True]},
        {"history": [""]},
        {"history": ["1"] * 1001},
        {"history": ["1"], "colour": "red"},
        {"k": 5},
        {"user_id": None},
    ],
)
def test_recommend_request_rejects(body: dict) -> None:
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate(body)


def test_recommend_request_reads_integer_ids_as_strings() -> None:
    request = RecommendRequest.model_validate({"history": [242, "302"], "exclude": [7]})
    assert request.history == ["242", "302"] and request.exclude == ["7"] and request.k == 10


def test_serve_config_fixed_or_autoscaled_and_key_only_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = serve_config(ServeConfig(num_replicas=2, port=9000), "/m")
    deployment = fixed["applications"][0]["deployments"][0]
    assert deployment["num_replicas"] == 2 and "autoscaling_config" not in deployment
    assert fixed["http_options"] == {"host": "127.0.0.1", "port": 9000, "request_timeout_s": 10.0}
    monkeypatch.setenv("RAYSYS_TEST_KEY", "s3cret")
    scaled = serve_config(ServeConfig(max_replicas=3, api_key_env="RAYSYS_TEST_KEY"), "/m")
    deployment = scaled["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in deployment
    assert deployment["user_config"]["api_key_sha256"] == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in yaml.safe_dump(scaled)
    with pytest.raises(RaysysError, match="serve.model_dir"):
        serve_config(ServeConfig(), None)
    monkeypatch.delenv("RAYSYS_TEST_KEY")
    with pytest.raises(RaysysError, match="RAYSYS_TEST_KEY"):
        serve_config(ServeConfig(api_key_env="RAYSYS_TEST_KEY"), "/m")


def test_shipped_serve_yaml_is_a_valid_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    from raysys.serve.app import ReplicaSettings

    raw = yaml.safe_load((ROOT / "jobs" / "configs" / "serve.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    app = config.applications[0]
    assert app.import_path == "raysys.serve.app:app"
    ReplicaSettings.model_validate(app.deployments[0].user_config)
    # The CLI builds the same shape: same import path, deployment name and user_config keys.
    built = serve_config(ServeConfig(), "/m")["applications"][0]
    assert built["import_path"] == app.import_path and built["deployments"][0]["name"] == app.deployments[0].name
    assert set(built["deployments"][0]["user_config"]) == set(app.deployments[0].user_config)
