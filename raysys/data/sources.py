"""Sources: find the input files of an interaction log, check them, and describe how to parse each.

Formats (`data.format`; "auto" detects from the path, and no path at all means "synthetic"):

    parquet    Parquet files with data.user_col, item_col, time_col [, rating_col, event_col]
    csv        the same as delimited text with a header (data.csv_delimiter)
    movielens  u.data (tab, no header), ratings.dat (`::`), ratings.csv (userId,movieId,rating,timestamp);
               item text from u.item / movies.dat / movies.csv beside them
    recbole    RecBole atomic files: <name>.inter (tab, header `field:type`); item text from <name>.item
    sequence   one user per line: `user item item ...` in time order; the timestamp is the position
    event_log  the serving event log's directory (serve.event_log; raysys/data/event_log.py): its event
               records, with their event types; one read task per segment
    synthetic  raysys.data.synthetic.generate_logs(data.synthetic), cached under data.cache_dir

`data.path` is one file, a directory or a glob. `resolve_source` turns the data config into a
`LogSource`: a `LogFile` per read task (a text file, or a run of Parquet row groups) with its column
mapping, and the `ItemFile` beside the log. Reading them is `raysys.data.datasource`; item text is
`raysys.data.item_text`.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.config import DataConfig, config_hash
from raysys.data.event_log import FILE_NAME as EVENT_LOG_FILE
from raysys.data.event_log import INTERACTION_COLUMNS, readable_files
from raysys.data.validate import (
    FileRows,
    check_columns,
    check_same_types,
    check_value_types,
)
from raysys.errors import RaysysError

ROWS_PER_READ_TASK = 2_000_000  # Parquet row groups are grouped into read tasks of about this many rows
MOVIELENS_NAMES = ("u.data", "ratings.dat", "ratings.csv")
MOVIELENS_ITEM_FILES = {"ml-100k": "u.item", "ml-1m": "movies.dat", "ml-csv": "movies.csv"}
EVENT_LOG_COLUMNS = {name: name for name in INTERACTION_COLUMNS}  # canonical names already
LINE_DELIMITER = "\x1f"  # a delimiter that never occurs, to read whole lines with the CSV reader


@dataclass(frozen=True)
class LogFile:
    """One input file and how to parse it. `kind` is parquet, csv, recbole, ml-100k, ml-1m, ml-csv or
    sequence; `columns` maps canonical names (user_id, item_id, timestamp, rating, event) to file columns."""

    path: str
    kind: str
    file_index: int
    columns: dict[str, str] = field(default_factory=dict)
    delimiter: str = ","
    header_lines: int = 1
    file_names: tuple[str, ...] = ()  # every column of a text file, in order (for headerless reads)
    num_rows: int | None = None
    row_groups: tuple[int, ...] = ()  # Parquet: the row groups this read task covers
    first_row: int = 0  # Parquet: row index of the first of those row groups

    @property
    def rows(self) -> FileRows:
        """How this file's rows are numbered and named in messages."""
        unit = {"parquet": "row", "sequence": "interaction", "event_log": "record"}.get(self.kind, "line")
        return FileRows(self.path, self.file_index, self.header_lines, unit, self.columns)


@dataclass(frozen=True)
class ItemFile:
    """An item side file: kind is recbole, ml-100k, ml-1m, ml-csv or table (Parquet/CSV with an id column)."""

    path: str
    kind: str
    id_column: str = "item_id"
    text_fields: tuple[str, ...] | None = None  # None = every text field the file has
    delimiter: str = ","


@dataclass(frozen=True)
class LogSource:
    """Everything the prepare stage reads: interaction files, their format, and the item side file."""

    format: str
    files: tuple[LogFile, ...]
    has_ratings: bool
    has_events: bool
    item_file: ItemFile | None = None
    negative_events: tuple[str, ...] = ()  # event types left out of the rows (data.negative_events), with events
    time_cutoff: float | None = None  # rows after this time are left out (data.time_cutoff)

    @property
    def input_paths(self) -> list[str]:
        """Every file the prepared dataset depends on, once each (for checksums)."""
        paths = [f.path for f in self.files] + ([self.item_file.path] if self.item_file else [])
        return list(dict.fromkeys(paths))  # a Parquet file read by several tasks appears once


def resolve_source(cfg: DataConfig) -> LogSource:
    """Find and check the input files named by the data config (generating synthetic logs if asked).

    File-level problems (missing path, unknown format, missing columns, unreadable or empty Parquet,
    a column whose type changes between files) raise RaysysError here, before any Ray work.
    """
    fmt = cfg.format
    if fmt == "synthetic" or (fmt == "auto" and not cfg.path):
        return _synthetic_source(cfg)
    if not cfg.path:
        raise RaysysError(
            f"data.format is {fmt!r} but data.path is not set",
            where="data.path",
            hint="set data.path to a file, directory or glob, or use data.format=synthetic",
        )
    roots = _expand(cfg.path)
    if fmt == "auto":
        fmt = detect_format(roots[0])
    paths = _list_files(fmt, roots, cfg.path)
    if fmt == "parquet":
        files = _parquet_files(paths, cfg)
    elif fmt == "event_log":
        files = tuple(
            LogFile(path, "event_log", i, dict(EVENT_LOG_COLUMNS), header_lines=0) for i, path in enumerate(paths)
        )
    else:
        files = tuple(_text_file(path, fmt, i, cfg) for i, path in enumerate(paths))
    has_ratings = _optional_column(files, "rating", cfg.rating_col, required=False)
    has_events = fmt == "event_log" or _optional_column(files, "event", cfg.event_col, required=True)
    files = tuple(_drop_absent(f, has_ratings, has_events) for f in files)
    item_file = _item_file(cfg, fmt, files)
    negative = tuple(cfg.negative_events) if has_events else ()
    cutoff = cfg.time_cutoff if cfg.split == "leave_one_out" else None  # temporal: later rows are test targets
    return LogSource(fmt, files, has_ratings, has_events, item_file, negative, cutoff)


def detect_format(path: Path) -> str:
    """The format of a file or directory, from names, suffixes and (for ratings.csv) the header."""
    names = [p.name for p in sorted(path.iterdir())] if path.is_dir() else [path.name]
    if any(EVENT_LOG_FILE.match(n) for n in names):
        return "event_log"
    suffixes = {Path(n).suffix.lower() for n in names}
    if ".inter" in suffixes:
        return "recbole"
    if any(n in ("u.data", "ratings.dat") for n in names):
        return "movielens"
    if "ratings.csv" in names and first_line(path / "ratings.csv" if path.is_dir() else path).startswith("userId"):
        return "movielens"
    for suffix, fmt in (
        (".parquet", "parquet"),
        (".pq", "parquet"),
        (".csv", "csv"),
        (".tsv", "csv"),
        (".txt", "sequence"),
    ):
        if suffix in suffixes:
            return fmt
    raise RaysysError(
        "cannot tell the log format from the file names",
        where=str(path),
        hint="set data.format to parquet, csv, movielens, recbole or sequence",
    )


def _expand(path: str) -> list[Path]:
    """The files/directories a data.path names (a glob may name several)."""
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
        if not matches:
            raise RaysysError("the glob matches no file", where=path, hint="check data.path")
        return matches
    if not Path(expanded).exists():
        raise RaysysError("no such file or directory", where=path, hint="check data.path")
    return [Path(expanded)]


def _list_files(fmt: str, roots: list[Path], where: str) -> list[str]:
    """The log files of `fmt` under the given files/directories, in a stable (sorted) order."""
    out: list[Path] = []
    for root in roots:
        out.extend(_log_files_in(fmt, root) if root.is_dir() else [root])
    if not out:
        raise RaysysError(f"no {fmt} log files found", where=where, hint="check data.path and data.format")
    return [str(p) for p in out]


def _log_files_in(fmt: str, folder: Path) -> list[Path]:
    def visible(paths: list[Path]) -> list[Path]:
        return sorted(p for p in paths if p.is_file() and not p.name.startswith((".", "_")))

    if fmt == "event_log":
        return readable_files(folder)
    if fmt == "parquet":
        return visible([*folder.rglob("*.parquet"), *folder.rglob("*.pq")])
    if fmt == "csv":
        return visible([*folder.glob("*.csv"), *folder.glob("*.tsv")])
    if fmt == "movielens":
        return [folder / n for n in MOVIELENS_NAMES if (folder / n).is_file()][:1]
    if fmt == "recbole":
        own = folder / f"{folder.name}.inter"
        return [own] if own.is_file() else visible(list(folder.glob("*.inter")))
    return visible(list(folder.glob("*.txt")))


def first_line(path: Path, encoding: str = "utf-8") -> str:
    try:
        with open(path, encoding=encoding, errors="replace") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise RaysysError(f"cannot read the file ({exc.strerror})", where=str(path)) from None


def _parquet_files(paths: list[str], cfg: DataConfig) -> tuple[LogFile, ...]:
    """Check every Parquet footer and schema, then split the files into read tasks by row groups."""
    columns = _wanted_columns(cfg)
    schemas, files = [], []
    for i, path in enumerate(paths):
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as exc:
            raise RaysysError(f"not a readable Parquet file (truncated or corrupt: {exc})", where=path) from None
        schema = meta.schema.to_arrow_schema()
        check_columns(path, schema.names, _required(cfg))
        schemas.append((path, schema))
        mapped = {k: v for k, v in columns.items() if v in schema.names}
        check_value_types(path, schema, mapped)
        base = LogFile(path, "parquet", i, mapped, header_lines=0, file_names=tuple(schema.names))
        files.extend(_row_group_tasks(base, meta))
    check_same_types(schemas, list(columns.values()))
    return tuple(files)


def _row_group_tasks(base: LogFile, meta: pq.FileMetaData) -> list[LogFile]:
    """One LogFile per run of row groups holding about ROWS_PER_READ_TASK rows."""
    tasks, groups, first, start, rows = [], [], 0, 0, 0
    for g in range(meta.num_row_groups):
        if not groups:
            first = start
        groups.append(g)
        rows += meta.row_group(g).num_rows
        start += meta.row_group(g).num_rows
        if rows >= ROWS_PER_READ_TASK:
            tasks.append(replace(base, row_groups=tuple(groups), first_row=first, num_rows=rows))
            groups, rows = [], 0
    if groups or not tasks:
        tasks.append(replace(base, row_groups=tuple(groups), first_row=first, num_rows=rows))
    return tasks


def _text_file(path: str, fmt: str, index: int, cfg: DataConfig) -> LogFile:
    """A delimited-text or sequence file, with its header checked against the configured columns."""
    if os.path.getsize(path) == 0:
        raise RaysysError("the file is empty", where=path)
    if fmt == "sequence":
        return LogFile(path, "sequence", index, {}, header_lines=0)
    if fmt == "movielens":
        return _movielens_file(path, index)
    if fmt == "recbole":
        names = [n.split(":")[0] for n in first_line(Path(path)).split("\t")]
        return _named_text_file(path, "recbole", index, names, "\t", cfg)
    names = next(csv.reader([first_line(Path(path))], delimiter=cfg.csv_delimiter))
    return _named_text_file(path, "csv", index, names, cfg.csv_delimiter, cfg)


def _named_text_file(path: str, kind: str, index: int, names: list[str], delimiter: str, cfg: DataConfig) -> LogFile:
    check_columns(path, names, _required(cfg))
    mapped = {k: v for k, v in _wanted_columns(cfg).items() if v in names}
    return LogFile(path, kind, index, mapped, delimiter, header_lines=1, file_names=tuple(names))


def _movielens_file(path: str, index: int) -> LogFile:
    """u.data (tab), ratings.dat (`::`, read as ':' with empty fields between) or ratings.csv."""
    first = first_line(Path(path), "latin-1")
    canonical = {"user_id": "user_id", "item_id": "item_id", "rating": "rating", "timestamp": "timestamp"}
    if "::" in first:
        names = ("user_id", "_1", "item_id", "_2", "rating", "_3", "timestamp")
        return LogFile(path, "ml-1m", index, canonical, ":", header_lines=0, file_names=names)
    if first.startswith("userId"):
        named = {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"}
        return LogFile(path, "ml-csv", index, named, ",", 1, tuple(first.split(",")))
    return LogFile(path, "ml-100k", index, canonical, "\t", header_lines=0, file_names=tuple(canonical))


def _wanted_columns(cfg: DataConfig) -> dict[str, str]:
    """Canonical name -> configured column name, for every column the config asks for."""
    wanted = {"user_id": cfg.user_col, "item_id": cfg.item_col, "timestamp": cfg.time_col}
    if cfg.rating_col:
        wanted["rating"] = cfg.rating_col
    if cfg.event_col:
        wanted["event"] = cfg.event_col
    return wanted


def _required(cfg: DataConfig) -> dict[str, str]:
    return {"user_col": cfg.user_col, "item_col": cfg.item_col, "time_col": cfg.time_col}


def _optional_column(files: tuple[LogFile, ...], canonical: str, name: str | None, required: bool) -> bool:
    """Whether every file has an optional column; raise if only some do (or none, when it was asked for)."""
    if not name or not files:
        return False
    having = [f for f in files if canonical in f.columns]
    if having and len(having) < len(files):
        lacking = next(f for f in files if canonical not in f.columns)
        raise RaysysError(
            f"column {name!r} is missing here but present in {having[0].path}",
            where=lacking.path,
            hint="every file of a log needs the same columns",
        )
    if required and not having:
        raise RaysysError(f"column {name!r} (data.{canonical}_col) is not in the log", where=files[0].path)
    return bool(having)


def _drop_absent(file: LogFile, has_ratings: bool, has_events: bool) -> LogFile:
    keep = (
        {"user_id", "item_id", "timestamp"}
        | ({"rating"} if has_ratings else set())
        | ({"event"} if has_events else set())
    )
    return replace(file, columns={k: v for k, v in file.columns.items() if k in keep})


def _item_file(cfg: DataConfig, fmt: str, files: tuple[LogFile, ...]) -> ItemFile | None:
    """data.item_path when set, else the item file that ships beside MovieLens / RecBole logs."""
    fields = tuple(cfg.item_text_fields) if cfg.item_text_fields else None
    if cfg.item_path:
        path = _expand(cfg.item_path)[0]
        if path.suffix == ".item":
            return ItemFile(str(path), "recbole", cfg.item_col, fields, "\t")
        return ItemFile(str(path), "table", cfg.item_col, fields, cfg.csv_delimiter)
    first = Path(files[0].path)
    if fmt == "recbole":
        beside = first.with_suffix(".item")
        return ItemFile(str(beside), "recbole", cfg.item_col, fields, "\t") if beside.is_file() else None
    if fmt == "movielens":
        beside = first.parent / MOVIELENS_ITEM_FILES[files[0].kind]
        return ItemFile(str(beside), files[0].kind, "item_id", fields) if beside.is_file() else None
    return None


def _synthetic_source(cfg: DataConfig) -> LogSource:
    """Generate the synthetic log once per synthetic config under data.cache_dir, then read it as Parquet."""
    from raysys.data.synthetic import INTERACTIONS_FILE, ITEMS_FILE, generate_logs

    folder = Path(cfg.cache_dir).expanduser() / f"synthetic-{config_hash(cfg.synthetic)}"
    if not (folder / INTERACTIONS_FILE).is_file() or not (folder / ITEMS_FILE).is_file():
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        files = generate_logs(cfg.synthetic, tmp)
        if files.interactions.stat().st_size == 0:
            raise RaysysError("the synthetic generator wrote an empty log", where=str(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another process generated the same log first: it is identical, keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    synthetic_cfg = cfg.model_copy(
        update={
            "user_col": "user_id",
            "item_col": "item_id",
            "time_col": "timestamp",
            "rating_col": "rating",
            "event_col": None,
        }
    )
    files = _parquet_files([str(folder / INTERACTIONS_FILE)], synthetic_cfg)
    fields = tuple(cfg.item_text_fields) if cfg.item_text_fields else ("text",)  # its text starts with the title
    item_file = ItemFile(str(folder / ITEMS_FILE), "table", "item_id", fields)
    return LogSource(format="synthetic", files=files, has_ratings=True, has_events=False, item_file=item_file)


def arrow_message(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
