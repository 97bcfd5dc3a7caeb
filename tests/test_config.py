"""Typed config: strict keys and types, dotted overrides, path resolution, the resolved config saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysys.config import Config, DataConfig, config_from_dict, load_config
from raysys.data.cache import data_config_hash
from raysys.errors import RaysysError
from raysys.run import start_run

ROOT = Path(__file__).resolve().parents[1]
# Every raysys config under jobs/configs (a Ray Serve deployment file, with `applications:`, is not one).
SHIPPED = [
    p
    for p in sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
    if "applications" not in (yaml.safe_load(p.read_text()) or {})
]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert Config.model_validate(cfg.to_dict()) == cfg


def test_relative_data_path_resolves_against_the_project_root() -> None:
    cfg = load_config(ROOT / "jobs" / "configs" / "ml100k.yaml")
    assert cfg.data.format == "recbole"
    assert Path(cfg.data.path) == (ROOT / ".." / "shared" / "data" / "ml-100k").resolve()


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"min_user_interaction": 5}}))
    with pytest.raises(RaysysError, match=r"unknown key 'data.min_user_interaction'") as err:
        load_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(RaysysError, match=r"unknown key 'data.nope'"):
        load_config(None, ["data.nope=1"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(RaysysError, match=r"data.min_user_interactions: .*'five'"):
        load_config(None, ["data.min_user_interactions=five"])
    with pytest.raises(RaysysError, match=r"data.on_bad_rows"):
        load_config(None, ["data.on_bad_rows=skip"])
    with pytest.raises(RaysysError, match=r"data.format"):
        config_from_dict({"data": {"format": "xlsx"}})


def test_dotted_overrides() -> None:
    cfg = load_config(
        ROOT / "jobs" / "configs" / "quickstart.yaml",
        [
            "data.min_user_interactions=5",
            "data.synthetic.num_interactions=200000",
            "data.item_text_fields=[title]",
            "distill.lambda_kd=0.5",
            "data.rating_col=null",
        ],
    )
    assert cfg.data.min_user_interactions == 5 and cfg.data.synthetic.num_interactions == 200_000
    assert cfg.data.item_text_fields == ["title"] and cfg.data.rating_col is None
    assert cfg.distill.lambda_kd == 0.5 and cfg.data.format == "synthetic"
    with pytest.raises(RaysysError, match="not of the form"):
        load_config(None, ["data.min_user_interactions"])


def test_override_paths_resolve_against_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, ["data.path=logs/x.csv"]).data.path == str(tmp_path / "logs" / "x.csv")


def test_a_list_of_paths_resolves_like_a_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["distill.extra_teachers=[runs/a/model, /abs/b/model]"])
    assert cfg.distill.extra_teachers == [str(tmp_path / "runs" / "a" / "model"), "/abs/b/model"]


def test_resolved_config_is_saved_and_reloads(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "jobs" / "configs" / "ml100k.yaml", ["data.min_item_interactions=2"])
    run_dir = start_run(tmp_path / "run", cfg)
    saved = load_config(run_dir / "config.yaml")
    assert saved == cfg and saved.data.min_item_interactions == 2


def test_data_cache_key_ignores_where_and_window_only() -> None:
    base = DataConfig(path="/x/log.csv")
    assert data_config_hash(base) == data_config_hash(base.model_copy(update={"cache_dir": "/elsewhere", "max_len": 7}))
    assert data_config_hash(base) != data_config_hash(base.model_copy(update={"min_user_interactions": 5}))
    assert data_config_hash(base) != data_config_hash(base.model_copy(update={"on_bad_rows": "drop"}))
