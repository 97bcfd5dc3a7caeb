"""The run report: one self-contained `report.html` (plots embedded as PNG) from a pipeline run directory.

    build_report(Path("runs/quickstart"))                           # -> runs/quickstart/report.html
    python -m raysys.report runs/quickstart --bench-serve runs/bench_serve

Read from the run directory: summary.json (the pipeline's: models, stages, serve_smoke),
prepare/summary.json (data), pretrain/, finetune/ and student/history.jsonl (one record per epoch: "loss",
"valid_ndcg@10", ...), tune/results.csv and ablation.csv when present (or the paths given), and a
`jobs/bench/serving.py` output folder when given. TensorBoard logs stay where training wrote them
(RUN/pretrain/tensorboard, RUN/finetune/tensorboard, RUN/student/tensorboard); the report names them.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from raysys.eval.evaluator import slice_metric
from raysys.train.history import read_history

REPORT_FILE = "report.html"
TRAINED = (
    "pretrain",
    "finetune",
    "teacher",
    "student",
    "student_no_kd",
)  # stage folders with a history (teacher: runs before finetune)
METRIC_COLUMNS = ("hr@10", "ndcg@10", "mrr@10", "recall@10", "coverage@10")
CURVES = (("loss", "training loss"), ("valid_ndcg@10", "validation NDCG@10"))
MAX_TABLE_ROWS = 50
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code,pre{background:#f6f6f6;padding:2px 4px}
img{max-width:100%}h2{border-bottom:1px solid #ddd;padding-bottom:3px}.muted{color:#777}"""


def build_report(
    run_dir: Path,
    *,
    ablation: Path | None = None,
    tune_results: Path | None = None,
    bench_serve: Path | None = None,
) -> Path:
    """Write run_dir/report.html; returns its path. Sections whose inputs are absent are left out."""
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json")
    ablation = ablation or _existing(run_dir / "ablation.csv")
    tune_results = tune_results or _existing(run_dir / "tune" / "results.csv")
    sections = [
        f"<h1>raysys pipeline report</h1>{headline(summary)}",
        _overview(run_dir, summary),
        _data_section(_read_json(run_dir / "prepare" / "summary.json")),
        _curves_section(run_dir),
        _metrics_section(summary.get("models", {})),
        _csv_section("Tune results", tune_results, "trials of `raysys tune`, best first when a ndcg column exists"),
        _csv_section("Ablation", ablation, "one row per variant"),
        _serving_section(summary.get("serve_smoke"), bench_serve),
        _abtest_section(_read_json(run_dir / "abtest.json")),
        _artifacts_section(run_dir, summary),
    ]
    body = "\n".join(section for section in sections if section)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>raysys run {html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
    out = run_dir / REPORT_FILE
    out.write_text(page)
    return out


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def history_frame(stage_dir: Path) -> pd.DataFrame:
    """The stage's history.jsonl as a frame (one row per epoch; empty when there is none)."""
    return pd.DataFrame(read_history(stage_dir))


# ------------------------------------------------------------------------------- sections


def _overview(run_dir: Path, summary: dict[str, Any]) -> str:
    rows = [
        [name, "skipped (up to date)" if rec.get("skipped") else f"{rec.get('seconds', 0):.1f} s"]
        for name, rec in summary.get("stages", {}).items()
    ]
    where, when = html.escape(str(summary.get("run_dir", run_dir))), html.escape(str(summary.get("finished_at", "?")))
    version = html.escape(str(summary.get("raysys_version", "?")))
    facts = (
        f"<p>Run <code>{where}</code>, finished {when}, raysys {version}, {summary.get('seconds', 0):.0f} s in all.</p>"
    )
    return "<h2>Run</h2>" + facts + (_table(["stage", "time"], rows) if rows else "")


def headline(summary: dict[str, Any]) -> str:
    """The answer first: the student against the baselines and its teacher, what distillation bought
    (when the run trained the student without it too), cold start, and the served latency."""
    models = summary.get("models", {})
    student = _test(models, "student")
    if student is None:
        return ""
    baselines = [(label, _test(models, name)) for name, label in BASELINES if _test(models, name)]
    against = [f"{student / value:.2f}× {label} ({value:.4f})" for label, value in baselines]
    lines = [
        f"The student scores test NDCG@10 <b>{student:.4f}</b>"
        + (f": {' and '.join(against)}" if against else "")
        + (f", {100 * student / _test(models, 'teacher'):.0f} % of its teacher" if _test(models, "teacher") else "")
        + " (full ranking over the catalog, seen items excluded)."
    ]
    control = _test(models, "student_no_kd")
    if control:
        lines.append(
            f"Distillation: {student:.4f} with the teacher against {control:.4f} for the same student trained "
            f"without it ({100 * (student / control - 1):+.1f} %)."
        )
    cold = models["student"]["metrics"].get("test/cold_items", {})
    warm = models["student"]["metrics"].get("test", {})
    if cold.get("num_users"):
        lines.append(
            f"Cold start: {int(cold['num_users'])} test users' next item was never trained on; the student's "
            f"HR@10 on them is {cold.get('hr@10', 0):.4f} (all users: {warm.get('hr@10', 0):.4f})."
        )
    smoke = summary.get("serve_smoke", {}).get("latency_ms", {})
    if smoke.get("p50") is not None:
        lines.append(
            f"Served: POST /recommend answered in {smoke['p50']} ms (p50 of {smoke.get('requests')} sequential "
            "requests to one replica on this machine)."
        )
    items = "".join(f"<li>{line}</li>" for line in lines[1:])
    return f"<h2>Result</h2><p class='headline'>{lines[0]}</p>" + (f"<ul>{items}</ul>" if items else "")


BASELINES = (("itemknn", "item-kNN"), ("popularity", "popularity"))


def _test(models: dict[str, Any], name: str) -> float | None:
    return models.get(name, {}).get("metrics", {}).get("test", {}).get("ndcg@10")


def _data_section(prepared: dict[str, Any]) -> str:
    if not prepared:
        return ""
    keys = (
        "num_users",
        "num_items",
        "num_interactions",
        "num_valid",
        "num_test",
        "num_cold_items",
        "num_dropped",
        "num_filtered",
        "has_text",
        "has_ratings",
    )
    rows = [[key, _count(prepared[key])] for key in keys if key in prepared]
    where = html.escape(str(prepared.get("dataset_path", "")))
    return f"<h2>Data</h2><p class='muted'>prepared dataset <code>{where}</code></p>" + _table(["", "value"], rows)


def _count(value: Any) -> Any:
    """A per-reason count dict as its total with the non-zero reasons, e.g. "3 (duplicate: 3)"."""
    if not isinstance(value, dict):
        return value
    reasons = ", ".join(f"{reason}: {n}" for reason, n in value.items() if n)
    return f"{sum(value.values())}" + (f" ({reasons})" if reasons else "")


def _curves_section(run_dir: Path) -> str:
    histories = {name: history_frame(run_dir / name) for name in TRAINED}
    histories = {name: frame for name, frame in histories.items() if not frame.empty}
    if not histories:
        return ""
    return (
        "<h2>Training curves</h2><p class='muted'>per epoch; the exported model is the best validation "
        "NDCG@10 epoch</p>" + _img(plot_curves(histories))
    )


def plot_curves(histories: dict[str, pd.DataFrame]) -> bytes:
    """PNG: training loss and validation NDCG@10 per epoch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(CURVES), figsize=(10, 3.6))
    for ax, (column, title) in zip(axes, CURVES, strict=True):
        for name, frame in histories.items():
            if column in frame:
                ax.plot(frame["epoch"], frame[column], marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


SLICE_COLUMNS = (  # (split or slice, metric) after the test metrics
    ("valid", "ndcg@10"),
    ("test/short_history", "ndcg@10"),
    ("test/cold_items", "hr@10"),
    ("test/cold_items", "ndcg@10"),
    ("test/warm_items", "hr@10"),
)


def _metrics_section(models: dict[str, Any]) -> str:
    if not models:
        return ""
    sizes = slice_sizes(models)
    headers = [
        "model",
        *(f"test {m}" for m in METRIC_COLUMNS),
        *(f"{part} {metric}" for part, metric in SLICE_COLUMNS),
    ]
    rows = []
    for name, entry in models.items():
        metrics = entry.get("metrics", {})
        test = metrics.get("test", {})
        rows.append(
            [
                name,
                *(test.get(m) for m in METRIC_COLUMNS),
                *(slice_metric(metrics, part, metric) for part, metric in SLICE_COLUMNS),
            ]
        )
    chart = _img(plot_metric_bars({row[0]: row[2] for row in rows if row[2] is not None}, "test NDCG@10"))
    note = (
        "<p class='muted'>full ranking over the whole catalog, leave-one-out, seen items excluded "
        "(the protocol is in evaluate/summary.json)</p>"
    )
    size_line = "<p>Users per split and slice: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + "</p>"
    return "<h2>Metrics</h2>" + note + _table(headers, rows) + (size_line if sizes else "") + chart


def slice_sizes(models: dict[str, Any]) -> dict[str, int]:
    """{split or slice: users in it} from the first model that reports it ("num_users")."""
    sizes: dict[str, int] = {}
    for entry in models.values():
        for part, values in entry.get("metrics", {}).items():
            if isinstance(values, dict) and "num_users" in values:
                sizes.setdefault(part, int(values["num_users"]))
    return sizes


def plot_metric_bars(values: dict[str, float], title: str) -> bytes:
    """PNG: one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    bars = ax.bar(list(values), list(values.values()), color="#4c72b0")
    ax.bar_label(bars, fmt="%.4f")
    ax.set_title(title)
    ax.set_ylim(0, max(values.values(), default=1.0) * 1.2 or 1.0)
    return _png(fig)


def _csv_section(title: str, path: Path | None, note: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    frame = pd.read_csv(path)
    ndcg = [c for c in frame.columns if "ndcg" in c.lower()]
    if ndcg:
        frame = frame.sort_values(ndcg[0], ascending=False)
    shown = frame.head(MAX_TABLE_ROWS)
    more = f" (first {MAX_TABLE_ROWS} of {len(frame)})" if len(frame) > MAX_TABLE_ROWS else ""
    return (
        f"<h2>{html.escape(title)}</h2><p class='muted'>{html.escape(note)}; from "
        f"<code>{html.escape(str(path))}</code>{more}</p>"
        + shown.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0)
    )


def _serving_section(smoke: dict[str, Any] | None, bench_serve: Path | None) -> str:
    parts = []
    if smoke:
        latency = smoke.get("latency_ms", {})
        rows = [[key, latency[key]] for key in ("first", "p50", "p90", "max", "requests") if key in latency]
        items = ", ".join(html.escape(str(i)) for i in smoke.get("top_items", []))
        parts.append(
            f"<p>Serve smoke query: POST /recommend for user <code>{html.escape(str(smoke.get('user_id')))}"
            f"</code> against the exported student (model {html.escape(str(smoke.get('model_version')))}), "
            f"one replica, sequential requests from the same machine; latency in ms.</p>"
            + _table(["latency", "ms"], rows)
            + f"<p>Top items: {items}</p>"
        )
    bench_md = Path(bench_serve) / "bench_serve.md" if bench_serve else None
    if bench_md is not None and bench_md.is_file():
        parts.append(f"<h3>Load benchmark (jobs/bench/serving.py)</h3><pre>{html.escape(bench_md.read_text())}</pre>")
    return "<h2>Serving</h2>" + "".join(parts) if parts else ""


def _abtest_section(result: dict[str, Any]) -> str:
    """The A/B test of `raysys abtest` (RUN/abtest.json): CTR per variant, its interval, the p-values."""
    if not result.get("variants"):
        return ""
    rows = []
    for name, v in result["variants"].items():
        low, high = v.get("ctr_ci95") or [None, None]
        interval = f"{low:.4f} – {high:.4f}" if low is not None and high is not None else None
        control = name == result.get("control")
        counts = [v.get(key) for key in ("users", "impressions", "clicks", "ctr")]
        tests = [v.get(key) for key in ("lift", "p_value", "p_value_impressions")]
        rows.append([name + (" (control)" if control else ""), *counts, interval, *tests])
    verdict = "significant" if result.get("significant") else "not significant"
    left = result.get("left_out", {})
    return (
        "<h2>A/B test</h2>"
        f"<p>Unit of analysis: the user (its variant is fixed by its id). p = {_cell(result.get('p_value'))}: "
        f"<b>{verdict}</b> at alpha {_cell(result.get('alpha'))}. CTR = clicks / impressions; the interval and "
        "p-value are the user-level delta method's; the impression-level test is shown beside it, for reference "
        f"only. Left out: {_cell(left.get('users_in_several_variants', 0))} users seen in several variants, "
        f"{_cell(left.get('feedback_without_impression', 0))} feedback records without an impression.</p>"
        + _table(
            ["variant", "users", "impressions", "clicks", "CTR", "95 % CI", "lift", "p (users)", "p (impressions)"],
            rows,
        )
    )


def _artifacts_section(run_dir: Path, summary: dict[str, Any]) -> str:
    rows = [[name, entry.get("path")] for name, entry in summary.get("models", {}).items() if entry.get("path")]
    boards = [name for name in TRAINED if (run_dir / name / "tensorboard").is_dir()]
    board_line = (
        (
            f"<p>TensorBoard logs: {', '.join(f'<code>{n}/tensorboard</code>' for n in boards)} "
            f"(<code>tensorboard --logdir {html.escape(str(run_dir))}</code>)</p>"
        )
        if boards
        else ""
    )
    if not rows and not board_line:
        return ""
    return "<h2>Artifacts</h2>" + (_table(["model", "model directory"], rows) if rows else "") + board_line


# ------------------------------------------------------------------------------- html helpers


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
