"""`raysys update` end to end (issue 18): events posted to the running endpoint -> an update of a tiny
run -> promoted and swapped into the running application while a client keeps asking, with no failed
request; new items and users then show in recommendations. A candidate made worse on purpose is not
promoted, and the reason says why."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_app import post, ranked

from raysys import cli
from raysys.data.dataset import PreparedDataset
from raysys.models.export import read_model_config

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "jobs" / "configs" / "tiny.yaml")
NEW_ITEMS = [f"ni{n}" for n in range(4)]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def raysys(*argv: str) -> None:
    """A raysys command in this process (it joins the session's Ray cluster and its Serve)."""
    assert cli.main(list(argv)) == 0


def build_base_run(root: Path, cache: Path) -> Path:
    """A tiny run laid out as the pipeline's (prepare, finetune = the teacher, student), its models trained
    in this process for one epoch each (the update under test is what runs on Ray Train here)."""
    from raysys.config import load_config
    from raysys.data.prepare import load_or_prepare
    from raysys.train.local import train_local
    from raysys.train.tasks import task_for

    cfg = load_config(TINY, [f"data.cache_dir={cache}", "finetune.epochs=1", "distill.epochs=1"])
    dataset = load_or_prepare(cfg.data, progress=False)
    (root / "prepare").mkdir(parents=True)
    (root / "prepare" / "summary.json").write_text(json.dumps({"dataset_path": str(dataset.path)}))
    teacher = train_local(cfg, "finetune", dataset)
    task_for(cfg, "finetune").export(teacher.model, root / "finetune", dataset, {"valid": teacher.valid})
    cfg = cfg.model_copy(
        update={"distill": cfg.distill.model_copy(update={"teacher": str(root / "finetune" / "model")})}
    )
    student = train_local(cfg, "distill", dataset)
    task_for(cfg, "distill").export(student.model, root / "student", dataset, {"valid": student.valid})
    return root


def update(out: Path, base: Path, log: Path, cache: Path, *extra: str) -> dict:
    raysys(
        "update", "--config", TINY, f"data.cache_dir={cache}", f"update.base_run={base}", f"update.event_log={log}",
        *extra, "--out", str(out),
    )  # fmt: skip
    return json.loads((out / "summary.json").read_text())


class Asker(threading.Thread):
    """Asks /recommend one request at a time until stopped; keeps every status."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.stop = url, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    status = client.post("/recommend", json={"user_id": "nu0", "k": 10}).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                self.statuses.append(status)
                time.sleep(0.05)


def served_version(served) -> str:
    return httpx.get(f"{served.url}/metadata", timeout=10).json()["model_version"]


def test_update_promotes_and_swaps_without_a_failed_request_and_refuses_a_worse_candidate(served, tmp_path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "event_log"
    base = build_base_run(tmp_path / "base", cache)
    dataset = PreparedDataset.open(json.loads((base / "prepare" / "summary.json").read_text())["dataset_path"])
    cutoff, old_items = dataset.manifest["max_timestamp"], [i for i in dataset.item_ids() if i]
    old_users = dataset.user_vocab()["user_id"].to_pylist()
    served.model_dirs["update-base"] = base / "student" / "model"
    try:
        served.configure(model="update-base", event_log=str(log))
        rng, t = np.random.default_rng(0), cutoff + 1
        for n in range(40):  # new users: new items taken together, around a few old ones
            user, picks = f"nu{n}", rng.permutation(NEW_ITEMS)[:3].tolist()
            for item in [picks[0], str(rng.choice(old_items)), picks[1], picks[2]]:
                assert post(served, "/events", {"user_id": user, "item_ids": [item], "timestamp": t}).status_code == 200
                t += 1
        for user in old_users[:30]:  # old users: one new item after their own history
            body = {"user_id": user, "item_ids": [str(rng.choice(NEW_ITEMS))], "timestamp": t}
            assert post(served, "/events", body).status_code == 200
            t += 1
        before = [ranked(post(served, "/recommend", {"user_id": f"nu{n}", "k": 10})) for n in range(40)]
        assert not {i for top in before for i in top} & set(NEW_ITEMS)  # the base model does not know them

        asker = Asker(served.url)
        asker.start()
        first = update(tmp_path / "u1", base, log, cache, "update.serve_app=raysys", "update.lr=3e-3")
        time.sleep(2.0)  # the asker goes on past the swap
        asker.stop.set()
        asker.join()
        assert first["promoted"], first["reason"]
        assert first["vocab"] == {"new_items": 4, "new_users": 40, "items_with_logged_text": 0}
        assert first["events"]["new"] == 190
        assert first["swap"]["app"] == "raysys" and first["swap"]["previous"] == str(base / "student" / "model")
        candidate = first["models"]["candidate"]["metrics"]
        assert candidate["unrankable"] < first["models"]["serving"]["metrics"]["unrankable"]
        assert len(asker.statuses) > 20 and set(asker.statuses) == {200}, asker.statuses
        assert served_version(served) == read_model_config(tmp_path / "u1" / "student" / "model")["model_version"]
        after = [ranked(post(served, "/recommend", {"user_id": f"nu{n}", "k": 10})) for n in range(40)]
        assert {i for top in after for i in top} & set(NEW_ITEMS)  # new items reach the new users

        # The promoted run is the next base. Made worse on purpose (a learning rate that wrecks the
        # weights), the candidate is not promoted and the endpoint keeps serving the first update.
        for user in old_users[30:60]:
            body = {"user_id": user, "item_ids": [str(rng.choice(old_items))], "timestamp": t}
            assert post(served, "/events", body).status_code == 200
            t += 1
        worse = update(
            tmp_path / "u2", tmp_path / "u1", log, cache, "update.serve_app=raysys", "update.lr=1000", "update.epochs=1"
        )
        assert not worse["promoted"] and worse["swap"] is None
        assert worse["events"]["since"] == "the last update's log position"  # and what the first one held out
        assert worse["events"]["new"] == first["events"]["held_out"] + 30
        assert "worse" in worse["reason"] and "promote_margin" in worse["reason"], worse["reason"]
        assert served_version(served) == read_model_config(tmp_path / "u1" / "student" / "model")["model_version"]
    finally:
        served.configure()  # the session's model and log again for the tests after
