"""report.html from a hand-made run directory: every section, numbers and embedded plots."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd

from raysys.report import build_report
from raysys.report.report import history_frame


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_has_every_section_with_its_numbers(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path)
    (tmp_path / "ablation.csv").write_text("variant,test_ndcg@10\nno_kd,0.2500\nfull,0.2875\n")
    (run / "tune").mkdir()
    pd.DataFrame({"trial_id": ["a", "b"], "best_valid_ndcg@10": [0.21, 0.27], "distill.lr": [1e-3, 2e-3]}).to_csv(
        run / "tune" / "results.csv", index=False
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_serve.md").write_text("| items | max sustained req/s |\n| 1682 | 400 |\n")

    path = build_report(run, ablation=tmp_path / "ablation.csv", bench_serve=bench)

    assert path == run / "report.html"
    page = path.read_text()
    for heading in ("Data", "Training curves", "Metrics", "Tune results", "Ablation", "Serving", "Artifacts"):
        assert f"<h2>{heading}</h2>" in page
    assert "<td>6789</td>" in page and "<td>3 (duplicate: 3)</td>" in page
    assert "<td>0.3125</td>" in page and "<td>0.2875</td>" in page and "<td>0.1111</td>" in page
    assert page.index("0.27") < page.index("0.21")  # tune trials best first
    assert "no_kd" in page and "400" in page  # ablation rows and the load benchmark
    assert "<td>9.25</td>" in page and "i3, i9" in page  # smoke latency p50 and top items
    assert "Users per split and slice: test 940, test/cold_items 17" in page and "test/cold_items hr@10" in page
    assert "pretrain/tensorboard" in page and "finetune/tensorboard" in page and "skipped (up to date)" in page
    pngs = _pngs(page)
    assert len(pngs) == 2 and all(png.startswith(b"\x89PNG") for png in pngs)


def test_report_opens_with_the_result(tmp_path: Path, make_run) -> None:
    page = build_report(make_run(tmp_path)).read_text()
    assert page.index("<h2>Result</h2>") < page.index("<h2>Run</h2>") < page.index("<h2>Metrics</h2>")
    result = page[page.index("<h2>Result</h2>") : page.index("<h2>Run</h2>")]
    assert "test NDCG@10 <b>0.2875</b>: 1.29× item-kNN (0.2222) and 2.59× popularity (0.1111)" in result
    assert "92 % of its teacher" in result
    assert "0.2875 with the teacher against 0.2500 for the same student trained without it (+15.0 %)" in result
    assert "17 test users' next item was never trained on" in result and "HR@10 on them is 0.1250" in result
    assert "answered in 9.25 ms" in result


def test_report_leaves_out_what_the_run_lacks(tmp_path: Path, metrics_of) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"models": {"popularity": {"metrics": metrics_of(0.1)}}}))

    page = build_report(run).read_text()

    assert "<h2>Metrics</h2>" in page
    for heading in ("Result", "Data", "Training curves", "Tune results", "Ablation", "Serving"):
        assert f"<h2>{heading}</h2>" not in page
    assert len(_pngs(page)) == 1  # the metrics bar chart only


def test_history_frame_orders_epochs(tmp_path: Path, write_history) -> None:
    write_history(tmp_path / "teacher", [3.0, 2.0], [0.1, 0.2])
    frame = history_frame(tmp_path / "teacher")
    assert frame["epoch"].tolist() == [1, 2] and frame["loss"].tolist() == [3.0, 2.0]
    assert history_frame(tmp_path / "missing").empty


def test_a_slice_without_users_shows_no_value() -> None:
    import re

    from raysys.report.report import _metrics_section

    test = {"hr@10": 0.5, "ndcg@10": 0.25, "mrr@10": 0.2, "recall@10": 0.5, "coverage@10": 0.9, "num_users": 5}
    empty = {"ndcg@10": 0.0, "hr@10": 0.0, "num_users": 0}
    section = _metrics_section({"student": {"metrics": {"test": test, "test/short_history": empty}}})
    headers = re.findall(r"<th>(.*?)</th>", section)
    cells = re.findall(r"<td>(.*?)</td>", section.split("<td>student</td>")[1].split("</tr>")[0])
    assert cells[headers.index("test/short_history ndcg@10") - 1] == "–"  # not a measured 0
    assert "test/short_history 0" in section  # its size still says why
