"""The model directory: export, exact reload, recommend() in original ids, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysys.config import StudentConfig, TeacherConfig
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.models.export import export_model_dir, load_model_dir
from raysys.models.student import build_student
from raysys.models.teacher import build_teacher
from raysys.serve.scoring import Query, ServingModel

MAX_LEN = 4
TINY_STUDENT = StudentConfig(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)


def write_prepared_dataset(root: Path, sequences: list[list[int]], num_items: int) -> PreparedDataset:
    """A prepared dataset directory in the contract layout of raysys.data.dataset (item index i has
    original id "m<i>", user n has id "u<n>"; leave-one-out targets from the last two items)."""
    root.mkdir(parents=True)
    indices = list(range(2, num_items))
    pq.write_table(
        pa.table({"item_id": [f"m{i}" for i in indices], "item_index": pa.array(indices, pa.int32())}),
        root / "item_vocab.parquet",
    )
    users = [f"u{n}" for n in range(len(sequences))]
    pq.write_table(
        pa.table({"user_id": users, "user_index": pa.array(range(len(users)), pa.int32())}), root / "user_vocab.parquet"
    )
    (root / "sequences").mkdir()
    pq.write_table(
        pa.table(
            {
                "user_index": pa.array(range(len(users)), pa.int32()),
                "user_id": users,
                "items": pa.array(sequences, pa.list_(pa.int32())),
                "timestamps": pa.array([list(range(len(s))) for s in sequences], pa.list_(pa.int64())),
                "train_len": pa.array([len(s) - 2 for s in sequences], pa.int32()),
                "valid_target": pa.array([s[-2] for s in sequences], pa.int32()),
                "test_target": pa.array([s[-1] for s in sequences], pa.int32()),
            }
        ),
        root / "sequences" / "part-0.parquet",
    )
    manifest = {"format_version": 1, "item_vocab_size": num_items, "num_users": len(users), "has_text": False}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return PreparedDataset.open(root)


@pytest.fixture
def dataset(tmp_path: Path) -> PreparedDataset:
    # 12 items (indices 2..11); user 0 has a history longer than MAX_LEN.
    sequences = [[2, 3, 4, 5, 6, 7], [5, 6, 7], [8, 9, 2, 3], [4, 4, 5]]
    return write_prepared_dataset(tmp_path / "data", sequences, num_items=12)


def export_student(model, out: Path, dataset: PreparedDataset, cfg: StudentConfig = TINY_STUDENT) -> Path:
    return export_model_dir(
        model, out, dataset, kind="student", model_cfg=cfg, max_len=MAX_LEN, metrics={"valid": {"ndcg@10": 0.5}}
    )


def random_inputs(num_items: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(2, num_items, (5, MAX_LEN), generator=torch.Generator().manual_seed(seed))
    ids[0, :2] = 0  # a left-padded row
    return ids


@pytest.mark.parametrize("arch", ["llama", "causal"])
def test_student_reloads_and_scores_identically(dataset: PreparedDataset, tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    student_cfg = TINY_STUDENT.model_copy(update={"arch": arch})
    model = build_student(student_cfg, dataset.num_items, MAX_LEN).eval()
    out = export_student(model, tmp_path / "model", dataset, student_cfg)
    loaded = load_model_dir(out)
    ids = random_inputs(dataset.num_items)
    with torch.no_grad():
        assert torch.equal(loaded.next_item_scores(ids), model.next_item_scores(ids))
    assert not loaded.model.training
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "student" and config["architecture"] == arch
    assert config["format_version"] == 1 and config["num_items"] == 12 and config["max_len"] == MAX_LEN
    assert config["model_config"] == student_cfg.model_dump(mode="json")
    assert config["model_version"].startswith("student-") and config["raysys_version"]
    assert loaded.metrics == {"valid": {"ndcg@10": 0.5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # no temp dirs left behind


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_teacher_reloads_and_scores_identically(arch: str, dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TeacherConfig(arch=arch, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    torch.manual_seed(0)
    model = build_teacher(cfg, dataset.num_items, MAX_LEN).eval()
    out = export_model_dir(
        model, tmp_path / "t", dataset, kind="teacher", model_cfg=cfg, max_len=MAX_LEN, metrics={}, model_version="v7"
    )
    loaded = load_model_dir(out)
    ids = random_inputs(dataset.num_items, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.next_item_scores(ids), model.next_item_scores(ids), rtol=0, atol=1e-6)
    assert loaded.kind == "teacher" and loaded.model_version == "v7" and loaded.model.arch == arch


def test_text_model_round_trips_its_text_table(dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TINY_STUDENT.model_copy(update={"use_text": True})
    text_emb = torch.zeros(dataset.num_items, 8)
    text_emb[2:10] = torch.randn(8, 8)  # items 10, 11 have no text
    model = build_student(cfg, dataset.num_items, MAX_LEN, text_emb=text_emb).eval()
    out = export_student(model, tmp_path / "model", dataset, cfg)
    loaded = load_model_dir(out)
    ids = random_inputs(dataset.num_items)
    with torch.no_grad():
        assert torch.equal(loaded.next_item_scores(ids), model.next_item_scores(ids))
    table = pq.read_table(out / "item_text_emb.parquet")
    assert table["item_id"].to_pylist() == [f"m{i}" for i in range(2, 10)]
    assert np.allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), text_emb[2:10].numpy())


def test_histories_and_popularity_use_original_ids(dataset: PreparedDataset, tmp_path: Path) -> None:
    loaded = load_model_dir(export_student(build_student(TINY_STUDENT, 12, MAX_LEN), tmp_path / "m", dataset))
    # The whole log (train + valid + test), most recent MAX_LEN items, as serving sees the user now.
    assert loaded.user_histories == {
        "u0": ["m4", "m5", "m6", "m7"],
        "u1": ["m5", "m6", "m7"],
        "u2": ["m8", "m9", "m2", "m3"],
        "u3": ["m4", "m4", "m5"],
    }
    pop = dict(zip(loaded.popularity["item_id"].to_pylist(), loaded.popularity["count"].to_pylist(), strict=True))
    assert pop["m5"] == 3 and pop["m4"] == 3 and pop["m10"] == 0 and len(pop) == 10
    assert loaded.popularity["count"].to_pylist() == sorted(pop.values(), reverse=True)
    assert loaded.item_ids[5] == "m5" and loaded.item_index["m5"] == 5


def test_served_ranking_returns_original_ids_and_excludes(dataset: PreparedDataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student(TINY_STUDENT, dataset.num_items, MAX_LEN).eval()
    loaded = load_model_dir(export_student(model, tmp_path / "m", dataset))
    served = ServingModel(loaded)
    history = ["m2", "nope", "m3", "m4", "m5", "m6"]  # longer than MAX_LEN, one unknown id
    recs = served.predict([Query(history, 3, exclude=["m9"])])[0]
    assert recs.unknown_items == ["nope"] and recs.fallback is None
    ids = [item for item, _ in recs.items]
    assert len(ids) == 3 and not set(ids) & {"m2", "m3", "m4", "m5", "m6", "m9"}  # whole history excluded
    with torch.no_grad():
        scores = model.next_item_scores(torch.tensor([[3, 4, 5, 6]]))[0]
    expected = [f"m{i}" for i in scores.argsort(descending=True).tolist() if i not in {2, 3, 4, 5, 6, 9}][:3]
    assert ids == expected
    assert [s for _, s in recs.items] == sorted((s for _, s in recs.items), reverse=True)

    everything = served.predict([Query(["m2"], 100, exclude_seen=False)])[0]
    assert len(everything.items) == 10 and "m2" in [i for i, _ in everything.items]  # real items only, k clamped

    cold_user = served.predict([Query(["unknown-1"], 2)])[0]
    assert cold_user.fallback == "popularity" and cold_user.unknown_items == ["unknown-1"]
    assert [i for i, _ in cold_user.items] == loaded.popularity["item_id"].to_pylist()[:2]


def test_reexport_replaces_the_directory(dataset: PreparedDataset, tmp_path: Path) -> None:
    out = export_student(build_student(TINY_STUDENT, 12, MAX_LEN), tmp_path / "m", dataset)
    (out / "stale.txt").write_text("from the old export")
    export_student(build_student(TINY_STUDENT, 12, MAX_LEN), out, dataset)
    assert not (out / "stale.txt").exists() and load_model_dir(out).num_items == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m"]


def test_loading_needs_no_training_code(dataset: PreparedDataset, tmp_path: Path) -> None:
    out = export_student(build_student(TINY_STUDENT, 12, MAX_LEN), tmp_path / "m", dataset)
    script = (
        "import sys; from raysys.models.export import load_model_dir; m = load_model_dir(sys.argv[1]); "
        "bad = [k for k in sys.modules if k.startswith(('raysys.train', 'raysys.objectives', 'ray.'))]; "
        "assert not bad, bad; import torch; s = m.next_item_scores(torch.tensor([[m.item_index['m2']]]))[0]; "
        "s[:2] = -1e9; print(m.item_ids[int(s.argmax())])"
    )
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("m")


def break_config(out: Path, **changes) -> None:
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: (out / "popularity.parquet").unlink(), "missing popularity.parquet"),
        (lambda out: (out / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda out: break_config(out, format_version=99), "format version 99 is not 1"),
        (lambda out: (out / "model.safetensors").write_bytes(b"\x00" * 10), "weights do not load"),
        (lambda out: break_config(out, num_items=20), "weights do not load"),
        (lambda out: break_config(out, kind="critic"), "unknown kind"),
    ],
)
def test_broken_directories_raise_clear_errors(damage, message: str, dataset: PreparedDataset, tmp_path: Path) -> None:
    out = export_student(build_student(TINY_STUDENT, 12, MAX_LEN), tmp_path / "m", dataset)
    damage(out)
    with pytest.raises(RaysysError, match=message):
        load_model_dir(out)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RaysysError, match="model directory not found"):
        load_model_dir(tmp_path / "nowhere")


def test_export_rejects_a_model_of_another_shape(dataset: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_items=30"):
        export_student(build_student(TINY_STUDENT, 30, MAX_LEN), tmp_path / "m", dataset)
    assert not any(tmp_path.glob(".m*"))


def test_warm_start_keeps_the_old_items_weights_and_grows_the_catalog(tmp_path: Path) -> None:
    """`warm_start` (an update's init_from): a model over a catalog that extends the directory's keeps
    every old parameter and the old items' rows, and gives the new items their fresh initialisation; a
    catalog that does not start with the directory's items is refused."""
    from raysys.bench.model_dirs import random_model_dir
    from raysys.models.export import warm_start

    cfg = StudentConfig(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0, use_text=True)
    old_dir = random_model_dir(tmp_path / "old", num_items=30, num_users=20, model_cfg=cfg, max_len=MAX_LEN)
    old = load_model_dir(old_dir)
    ids = [*old.item_ids, "new-a", "new-b", "new-c"]
    torch.manual_seed(7)
    grown = build_student(cfg, len(ids), MAX_LEN, text_emb=torch.rand(len(ids), 384))
    fresh = {name: t.clone() for name, t in grown.state_dict().items()}
    assert warm_start(grown, old_dir, ids) == 3
    state, before = grown.state_dict(), old.model.state_dict()
    grown_names = [n for n, t in before.items() if t.shape != state[n].shape]
    assert grown_names  # the item table (and whatever else is per item) grew
    for name, tensor in state.items():
        if name in grown_names and name in dict(grown.named_parameters()):
            n = before[name].shape[0]
            assert torch.equal(tensor[:n], before[name]) and torch.equal(tensor[n:], fresh[name][n:]), name
        elif name in grown_names:  # a buffer of the new catalog (its text embeddings): the new model's
            assert torch.equal(tensor, fresh[name]), name
        else:
            assert torch.equal(tensor, before[name]), name

    same = build_student(cfg, len(old.item_ids), MAX_LEN, text_emb=torch.rand(len(old.item_ids), 384))
    assert warm_start(same, old_dir, list(old.item_ids)) == 0
    assert all(torch.equal(t, before[n]) for n, t in same.state_dict().items())  # the same catalog: everything
    with pytest.raises(RaysysError, match="not the first of this dataset"):
        warm_start(grown, old_dir, ["", "", "new-a", *old.item_ids[2:]])
