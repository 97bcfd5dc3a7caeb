"""`raysys <stage> --config FILE [dotted.key=value ...] --out DIR`.

Each stage is a recipe module in `raysys.recipes` exposing `DESCRIPTION`, an optional
`add_arguments(parser)` for its own flags, and `run(cfg, out_dir, args) -> dict` whose result is
written to `DIR/summary.json` beside the resolved config. A `RaysysError` becomes a one-line message
on stderr and exit code 2; it never shows a traceback. What Ray and the libraries print goes to
`DIR/raysys.log` (`raysys.console.quiet`) unless `--verbose`; raysys's own lines stay on the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from raysys import __version__
from raysys.config import load_config
from raysys.console import LOG_FILE, console, quiet
from raysys.errors import RaysysError
from raysys.run import default_out_dir, start_run, write_summary

STAGES: dict[str, str] = {
    "prepare": "raysys.recipes.prepare",
    "embed_items": "raysys.recipes.embed_items",
    "evaluate": "raysys.recipes.evaluate",
    "serve": "raysys.recipes.serve",
    "pretrain": "raysys.recipes.pretrain",
    "finetune": "raysys.recipes.finetune",
    "distill": "raysys.recipes.distill",
    "tune": "raysys.recipes.tune",
    "pipeline": "raysys.recipes.pipeline",
    "update": "raysys.recipes.update",
    "abtest": "raysys.recipes.abtest",
}

EPILOG = """examples:
  raysys prepare --config jobs/configs/quickstart.yaml
  raysys prepare --config jobs/configs/ml100k.yaml data.min_user_interactions=5 --out runs/ml100k
  raysys evaluate --config jobs/configs/ml100k.yaml --baseline popularity --out runs/pop
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per stage."""
    parser = argparse.ArgumentParser(
        prog="raysys",
        description="Train, tune and serve self-supervised sequential recommenders on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raysys {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        stage = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        add_common_arguments(stage)
        if hasattr(module, "add_arguments"):
            module.add_arguments(stage)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --out and the dotted overrides every stage takes."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (see jobs/configs/); defaults if omitted")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<stage>-<UTC time>)")
    parser.add_argument(
        "--verbose", action="store_true", help=f"show Ray's own output here instead of writing it to DIR/{LOG_FILE}"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. data.max_len=100 distill.lambda_kd=0.5",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; dotted overrides may come before or after the flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*args.overrides, *extra]
    return args


def run_stage(stage: str, args: argparse.Namespace) -> Path:
    """Load the config, run the stage's recipe, write summary.json; returns the run directory."""
    module: ModuleType = importlib.import_module(STAGES[stage])
    cfg = load_config(args.config, args.overrides)
    out_dir = start_run(args.out or default_out_dir(stage), cfg)
    with quiet(out_dir / LOG_FILE, verbose=getattr(args, "verbose", False)):
        summary = module.run(cfg, out_dir, args)
    write_summary(out_dir, stage, summary)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `raysys` command and of every `jobs/*.py` file."""
    args = parse_args(argv)
    try:
        out_dir = run_stage(args.stage, args)
    except KeyboardInterrupt:
        console.error(f"raysys {args.stage}: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - a RaysysError may arrive wrapped by a Ray task or actor
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        console.error(f"raysys {args.stage}: error: {user_error}")
        return user_error.exit_code
    console.say(f"raysys {args.stage}: done -> {out_dir / 'summary.json'}")
    return 0


def find_user_error(exc: BaseException | None) -> RaysysError | None:
    """The RaysysError behind `exc`, looking through Ray's task/actor error wrappers."""
    for _ in range(10):
        if exc is None:
            return None
        # Ray re-raises a task's error as a class deriving from both RayTaskError and the original
        # type, whose text carries the worker traceback: prefer the original error it wraps.
        cause = getattr(exc, "cause", None) or exc.__cause__
        if isinstance(exc, RaysysError) and not isinstance(cause, RaysysError):
            return exc
        exc = cause
    return None


def job_main(stage: str) -> None:
    """`python jobs/<stage>.py --config ...`: the same as `raysys <stage> --config ...`."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
