"""Readers: find the input files of an interaction log and read them with Ray Data.

Formats (`data.format`; "auto" detects from the path, and no path at all means "synthetic"):

    parquet    Parquet files with data.user_col, item_col, time_col [, rating_col, event_col]
    csv        the same as delimited text with a header (data.csv_delimiter)
    movielens  u.data (tab, no header), ratings.dat (`::`), ratings.csv (userId,movieId,rating,timestamp);
               item text from u.item / movies.dat / movies.csv beside them
    recbole    RecBole atomic files: <name>.inter (tab, header `field:type`); item text from <name>.item
    sequence   one user per line: `user item item ...` in time order; the timestamp is the position
    synthetic  raysys.data.synthetic.generate_logs(data.synthetic), cached under data.cache_dir

`data.path` is one file, a directory or a glob. Original IDs stay strings everywhere. Every reader
produces the normalized block of `raysys.data.validate` through one Ray Data datasource
(`InteractionLogDatasource`): a read task per file, or per group of Parquet row groups, so each row
gets its ordinal (file index, row in file) that makes the chronological sort stable.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysys.config import DataConfig, config_hash
from raysys.data.validate import (
    FileRows,
    check_columns,
    check_same_types,
    check_value_types,
    normalize_rows,
    normalized_schema,
    split_ordinal,
    unreadable_block,
)
from raysys.errors import RaysysError

ROWS_PER_READ_TASK = 2_000_000  # Parquet row groups are grouped into read tasks of about this many rows
ROWS_PER_BLOCK = 1_000_000  # rows per normalized block (bounds a read task's memory)
TEXT_BLOCK_BYTES = 32 << 20  # bytes of delimited text parsed at a time
BYTES_PER_ROW = 32  # in-memory size of a normalized row (estimates for Ray's planner)
MOVIELENS_NAMES = ("u.data", "ratings.dat", "ratings.csv")
MOVIELENS_ITEM_FILES = {"ml-100k": "u.item", "ml-1m": "movies.dat", "ml-csv": "movies.csv"}
MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
TEXT_TYPES = ("token", "token_seq")  # RecBole field types joined into item text by default
TEXT_SEPARATOR = " | "
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
        unit = {"parquet": "row", "sequence": "interaction"}.get(self.kind, "line")
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

    @property
    def input_paths(self) -> list[str]:
        """Every file the prepared dataset depends on, once each (for checksums)."""
        paths = [f.path for f in self.files] + ([self.item_file.path] if self.item_file else [])
        return list(dict.fromkeys(paths))  # a Parquet file read by several tasks appears once


# ---------------------------------------------------------------- finding the files


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
    else:
        files = tuple(_text_file(path, fmt, i, cfg) for i, path in enumerate(paths))
    has_ratings = _optional_column(files, "rating", cfg.rating_col, required=False)
    has_events = _optional_column(files, "event", cfg.event_col, required=True)
    files = tuple(_drop_absent(f, has_ratings, has_events) for f in files)
    item_file = _item_file(cfg, fmt, files)
    return LogSource(format=fmt, files=files, has_ratings=has_ratings, has_events=has_events, item_file=item_file)


def detect_format(path: Path) -> str:
    """The format of a file or directory, from names, suffixes and (for ratings.csv) the header."""
    names = [p.name for p in sorted(path.iterdir())] if path.is_dir() else [path.name]
    suffixes = {Path(n).suffix.lower() for n in names}
    if ".inter" in suffixes:
        return "recbole"
    if any(n in ("u.data", "ratings.dat") for n in names):
        return "movielens"
    if "ratings.csv" in names and _first_line(path / "ratings.csv" if path.is_dir() else path).startswith("userId"):
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


def _first_line(path: Path, encoding: str = "utf-8") -> str:
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
        names = [n.split(":")[0] for n in _first_line(Path(path)).split("\t")]
        return _named_text_file(path, "recbole", index, names, "\t", cfg)
    names = next(csv.reader([_first_line(Path(path))], delimiter=cfg.csv_delimiter))
    return _named_text_file(path, "csv", index, names, cfg.csv_delimiter, cfg)


def _named_text_file(path: str, kind: str, index: int, names: list[str], delimiter: str, cfg: DataConfig) -> LogFile:
    check_columns(path, names, _required(cfg))
    mapped = {k: v for k, v in _wanted_columns(cfg).items() if v in names}
    return LogFile(path, kind, index, mapped, delimiter, header_lines=1, file_names=tuple(names))


def _movielens_file(path: str, index: int) -> LogFile:
    """u.data (tab), ratings.dat (`::`, read as ':' with empty fields between) or ratings.csv."""
    first = _first_line(Path(path), "latin-1")
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


# ---------------------------------------------------------------- reading rows with Ray Data


class InteractionLogDatasource(Datasource):
    """A Ray Data datasource yielding normalized blocks (see raysys.data.validate) for a LogSource."""

    def __init__(self, source: LogSource, on_bad_rows: str) -> None:
        super().__init__()
        self._source = source
        self._on_bad_rows = on_bad_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(_estimated_rows(f) for f in self._source.files) * BYTES_PER_ROW

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: object = None
    ) -> list[ReadTask]:
        """One read task per LogFile (a text file, or a run of Parquet row groups), whatever `parallelism`."""
        tasks = []
        for file in self._source.files:
            rows = _estimated_rows(file)
            meta = BlockMetadata(
                num_rows=file.num_rows, size_bytes=rows * BYTES_PER_ROW, exec_stats=None, input_files=[file.path]
            )
            read = partial(read_log_file, file, self._on_bad_rows)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_interactions(source: LogSource, on_bad_rows: str) -> ray.data.Dataset:
    """The normalized interaction rows of `source` as a (lazy) Ray Dataset."""
    datasource = InteractionLogDatasource(source, on_bad_rows)
    return ray.data.read_datasource(datasource, override_num_blocks=len(source.files))


def read_log_file(file: LogFile, on_bad_rows: str) -> Iterator[pa.Table]:
    """Normalized blocks of one LogFile (runs inside a Ray read task).

    Never raises for a problem in the data: bad rows are marked (with on_bad_rows='fail' the file is
    not read past the first block holding one, since the run will stop), and a file that cannot be
    read further ends with an UNREADABLE marker row; the driver words the errors (module validate).
    """
    row = file.first_row
    try:
        for first_row, raw in _raw_tables(file):
            block = normalize_rows(raw, file.rows, first_row)
            yield block
            row = first_row + raw.num_rows
            if on_bad_rows == "fail" and pc.max(block["reason"]).as_py():
                return
    except (pa.ArrowException, OSError, UnicodeDecodeError):
        yield unreadable_block(
            normalized_schema("rating" in file.columns, "event" in file.columns), file.file_index, row
        )


def read_error(file: LogFile) -> RaysysError:
    """Re-read a file that a read task marked unreadable, in the driver, to word why it failed."""
    try:
        for _ in _raw_tables(file):
            pass
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        return RaysysError(
            f"cannot read the file ({_arrow_message(exc)})",
            where=file.path,
            hint="check that it is complete and in the format data.format says",
        )
    return RaysysError("the file could not be read by a Ray worker (but reads here)", where=file.path)


def log_file_at(source: LogSource, ordinal: int) -> LogFile:
    """The LogFile (for Parquet: the run of row groups) holding the row with `ordinal`."""
    file_index, row = split_ordinal(ordinal)
    chunks = [f for f in source.files if f.file_index == file_index]
    return next((f for f in chunks if f.first_row <= row < f.first_row + (f.num_rows or 0)), chunks[0])


def raw_row(source: LogSource, ordinal: int) -> tuple[FileRows, int, dict[str, object]]:
    """(file, row, values as read) of the row with `ordinal`. It re-reads the file in the driver, so it
    is for wording an error, not for bulk use."""
    file, (_, row) = log_file_at(source, ordinal), split_ordinal(ordinal)
    for first_row, raw in _raw_tables(file):
        if first_row <= row < first_row + raw.num_rows:
            return file.rows, row, {k: raw[k][row - first_row].as_py() for k in raw.column_names}
    return file.rows, row, {}


def _raw_tables(file: LogFile) -> Iterator[tuple[int, pa.Table]]:
    """(first row, raw table with canonical column names) per batch of a file."""
    if file.kind == "parquet":
        yield from _parquet_tables(file)
    elif file.kind == "sequence":
        yield from _sequence_tables(file)
    else:
        yield from _text_tables(file)


def _parquet_tables(file: LogFile) -> Iterator[tuple[int, pa.Table]]:
    names = {v: k for k, v in file.columns.items()}
    id_columns = [file.columns["user_id"], file.columns["item_id"]]
    reader = pq.ParquetFile(file.path, read_dictionary=id_columns)
    row = file.first_row
    if not file.row_groups:
        return
    for batch in reader.iter_batches(ROWS_PER_BLOCK, row_groups=list(file.row_groups), columns=list(names)):
        yield row, pa.Table.from_batches([batch]).rename_columns([names[n] for n in batch.schema.names])
        row += batch.num_rows


def _text_tables(file: LogFile) -> Iterator[tuple[int, pa.Table]]:
    names = {v: k for k, v in file.columns.items()}
    quoted = file.kind in ("csv", "ml-csv")  # RecBole and MovieLens .dat/.data files use no quoting
    reader = pacsv.open_csv(
        file.path,
        read_options=pacsv.ReadOptions(
            column_names=list(file.file_names),
            skip_rows=file.header_lines,
            block_size=TEXT_BLOCK_BYTES,
            encoding="latin-1" if file.kind == "ml-1m" else "utf8",
        ),
        parse_options=pacsv.ParseOptions(delimiter=file.delimiter, quote_char='"' if quoted else False),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in file.file_names}, include_columns=list(names)
        ),
    )
    row = 0
    for batch in reader:
        yield row, pa.Table.from_batches([batch]).rename_columns([names[n] for n in batch.schema.names])
        row += batch.num_rows


def _sequence_tables(file: LogFile) -> Iterator[tuple[int, pa.Table]]:
    """`user item item ...` lines -> one row per item, timestamp = position in the line. The row index
    used in ordinals and messages counts interactions (items) in file order."""
    reader = pacsv.open_csv(
        file.path,
        read_options=pacsv.ReadOptions(column_names=["line"], block_size=TEXT_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=LINE_DELIMITER, quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}),
    )
    row = 0
    for batch in reader:
        tokens = pc.utf8_split_whitespace(batch.column(0))
        starts = tokens.offsets.to_numpy()[:-1] - tokens.offsets[0].as_py()  # [lines] first token of each line
        items = pc.list_slice(tokens, 1)
        owner = pc.list_parent_indices(items).to_numpy()  # [interactions] line of each item
        item_starts = items.offsets.to_numpy()[:-1] - items.offsets[0].as_py()
        position = np.arange(len(owner), dtype=np.int64) - item_starts[owner]
        users = pc.take(pc.list_flatten(tokens), pa.array(starts[owner]))
        yield row, pa.table({"user_id": users, "item_id": pc.list_flatten(items), "timestamp": position})
        row += len(owner)


def _estimated_rows(file: LogFile) -> int:
    if file.num_rows is not None:
        return file.num_rows
    return max(1, os.path.getsize(file.path) // 24)  # about 24 bytes per delimited row


def _arrow_message(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------- item text


def read_item_text(item_file: ItemFile | None) -> pa.Table | None:
    """Item side information as (item_id string, text string), one row per item that has text; the
    fields are joined with ' | ' (e.g. 'Toy Story | 1995 | Animation Children's Comedy')."""
    if item_file is None:
        return None
    try:
        table = _ITEM_READERS[item_file.kind](item_file)
    except (pa.ArrowException, OSError) as exc:
        raise RaysysError(f"cannot read the item file ({_arrow_message(exc)})", where=item_file.path) from None
    text = pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(table["text"], "")), 0), None, table["text"])
    table = pa.table({"item_id": pc.cast(table["item_id"], pa.string()), "text": text}).filter(pc.is_valid(text))
    return _first_per_item(table)


def _first_per_item(table: pa.Table) -> pa.Table:
    """Keep the first row of each item id (an item file listing an item twice is not an error)."""
    rows = table.append_column("row", pa.array(np.arange(table.num_rows)))
    first = rows.group_by("item_id", use_threads=False).aggregate([("row", "min")])["row_min"]
    return table if len(first) == table.num_rows else table.take(pc.take(first, pc.sort_indices(first)))


def _join_fields(table: pa.Table, fields: list[str]) -> pa.Array:
    """Join string fields row-wise with ' | ', skipping empty ones."""
    parts = []
    for name in fields:
        values = pc.utf8_trim_whitespace(pc.cast(table[name], pa.string()))
        parts.append(pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(values, "")), 0), None, values))
    if len(parts) <= 1:  # (pyarrow drops null rows when joining a single column)
        return parts[0] if parts else pa.nulls(table.num_rows, pa.string())
    return pc.binary_join_element_wise(*parts, TEXT_SEPARATOR, null_handling="skip")


def _select_fields(item_file: ItemFile, available: list[str], default: list[str]) -> list[str]:
    if item_file.text_fields is None:
        return default
    unknown = [f for f in item_file.text_fields if f not in available]
    if unknown:
        raise RaysysError(
            f"data.item_text_fields {unknown} not in the item file (it has {available})", where=item_file.path
        )
    return list(item_file.text_fields)


def _recbole_items(item_file: ItemFile) -> pa.Table:
    header = _first_line(Path(item_file.path)).split("\t")
    names = [h.split(":")[0] for h in header]
    types = {h.split(":")[0]: (h.split(":") + [""])[1] for h in header}
    if item_file.id_column not in names:
        raise RaysysError(
            f"no item id field {item_file.id_column!r} (data.item_col); fields are {names}", where=item_file.path
        )
    table = _read_text_table(item_file.path, names, "\t", 1, quote=False)
    others = [n for n in names if n != item_file.id_column]
    default = [n for n in others if types[n] in TEXT_TYPES]
    text = _join_fields(table, _select_fields(item_file, others, default))
    return pa.table({"item_id": table[item_file.id_column], "text": text})


def _table_items(item_file: ItemFile) -> pa.Table:
    """A Parquet or CSV item file: the id column plus string fields."""
    if item_file.path.endswith((".parquet", ".pq")):
        table = pq.read_table(item_file.path)
    else:
        table = pacsv.read_csv(item_file.path, parse_options=pacsv.ParseOptions(delimiter=item_file.delimiter))
    if item_file.id_column not in table.column_names:
        raise RaysysError(
            f"no item id column {item_file.id_column!r} (data.item_col); columns are {table.column_names}",
            where=item_file.path,
        )
    others = [n for n in table.column_names if n != item_file.id_column]
    default = [n for n in others if pa.types.is_string(table.schema.field(n).type)]
    return pa.table(
        {"item_id": table[item_file.id_column], "text": _join_fields(table, _select_fields(item_file, others, default))}
    )


def _ml100k_items(item_file: ItemFile) -> pa.Table:
    """u.item: id|title|release date|video date|url|19 genre flags (latin-1); text = title | genres."""
    genre_file = Path(item_file.path).with_name("u.genre")
    genres = list(MOVIELENS_GENRES)
    if genre_file.is_file():
        lines = [ln.split("|")[0] for ln in genre_file.read_text(encoding="latin-1").splitlines() if ln.strip()]
        genres = lines or genres
    names = ["item_id", "title", "release", "video", "url", *[f"g{i}" for i in range(len(genres))]]
    table = _read_text_table(item_file.path, names, "|", 0, quote=False, encoding="latin-1")
    flags = [pc.if_else(pc.equal(table[f"g{i}"], "1"), name, None) for i, name in enumerate(genres)]
    genre_text = pc.binary_join_element_wise(*flags, " ", null_handling="skip")
    fields = pa.table({"title": table["title"], "release": table["release"], "genres": genre_text})
    return pa.table(
        {
            "item_id": table["item_id"],
            "text": _join_fields(fields, _select_fields(item_file, fields.column_names, ["title", "genres"])),
        }
    )


def _ml1m_items(item_file: ItemFile) -> pa.Table:
    """movies.dat: `id::title::genre|genre` (latin-1)."""
    lines = _read_text_table(item_file.path, ["line"], LINE_DELIMITER, 0, quote=False, encoding="latin-1")["line"]
    parts = pc.split_pattern(lines, "::", max_splits=2)
    fields = pa.table(
        {"title": pc.list_element(parts, 1), "genres": pc.replace_substring(pc.list_element(parts, 2), "|", " ")}
    )
    text = _join_fields(fields, _select_fields(item_file, fields.column_names, ["title", "genres"]))
    return pa.table({"item_id": pc.list_element(parts, 0), "text": text})


def _mlcsv_items(item_file: ItemFile) -> pa.Table:
    """movies.csv: movieId,title,genres (genres '|'-separated, '(no genres listed)' for none)."""
    table = pacsv.read_csv(
        item_file.path,
        convert_options=pacsv.ConvertOptions(
            column_types={"movieId": pa.string(), "title": pa.string(), "genres": pa.string()}
        ),
    )
    genres = pc.replace_substring(pc.replace_substring(table["genres"], "(no genres listed)", ""), "|", " ")
    fields = pa.table({"title": table["title"], "genres": genres})
    text = _join_fields(fields, _select_fields(item_file, fields.column_names, ["title", "genres"]))
    return pa.table({"item_id": table["movieId"], "text": text})


def _read_text_table(
    path: str, names: list[str], delimiter: str, skip: int, *, quote: bool, encoding: str = "utf8"
) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, encoding=encoding),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
    )


_ITEM_READERS = {
    "recbole": _recbole_items,
    "table": _table_items,
    "ml-100k": _ml100k_items,
    "ml-1m": _ml1m_items,
    "ml-csv": _mlcsv_items,
}
