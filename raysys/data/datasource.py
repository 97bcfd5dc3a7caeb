"""The Ray Data datasource of interaction logs: every format read into the normalized block of
`raysys.data.validate`.

`InteractionLogDatasource` makes a read task per `LogFile` (a text file, or a run of Parquet row
groups), so each row gets its ordinal (file index, row in file) that makes the chronological sort
stable. A problem in the data never raises inside a read task: bad rows are marked and an unreadable
file ends with a marker row; the driver words the errors (`read_error`, `raw_row`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysys.data.event_log import read_events_file
from raysys.data.sources import LINE_DELIMITER, LogFile, LogSource, arrow_message
from raysys.data.validate import (
    FileRows,
    normalize_rows,
    normalized_schema,
    split_ordinal,
    unreadable_block,
)
from raysys.errors import RaysysError

ROWS_PER_BLOCK = 1_000_000  # rows per normalized block (bounds a read task's memory)
TEXT_BLOCK_BYTES = 32 << 20  # bytes of delimited text parsed at a time
BYTES_PER_ROW = 32  # in-memory size of a normalized row (estimates for Ray's planner)


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
            source = self._source
            read = partial(read_log_file, file, self._on_bad_rows, source.negative_events, source.time_cutoff)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_interactions(source: LogSource, on_bad_rows: str) -> ray.data.Dataset:
    """The normalized interaction rows of `source` as a (lazy) Ray Dataset."""
    datasource = InteractionLogDatasource(source, on_bad_rows)
    return ray.data.read_datasource(datasource, override_num_blocks=len(source.files))


def read_log_file(
    file: LogFile, on_bad_rows: str, negative_events: tuple[str, ...] = (), time_cutoff: float | None = None
) -> Iterator[pa.Table]:
    """Normalized blocks of one LogFile (runs inside a Ray read task), without the rows whose event
    type is one of `negative_events` or whose time is after `time_cutoff`.

    Never raises for a problem in the data: bad rows are marked (with on_bad_rows='fail' the file is
    not read past the first block holding one, since the run will stop), and a file that cannot be
    read further ends with an UNREADABLE marker row; the driver words the errors (module validate).
    """
    row = file.first_row
    try:
        for first_row, raw in _raw_tables(file):
            block = normalize_rows(raw, file.rows, first_row)
            yield drop_after(drop_events(block, negative_events), time_cutoff)
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
            f"cannot read the file ({arrow_message(exc)})",
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
    elif file.kind == "event_log":
        yield 0, read_events_file(file.path)
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


def drop_events(block: pa.Table, events: tuple[str, ...]) -> pa.Table:
    """The block without the rows whose event type is in `events` (rows without one are kept)."""
    if not events or "event" not in block.column_names:
        return block
    values = pc.cast(block["event"], pa.string())
    return block.filter(pc.invert(pc.fill_null(pc.is_in(values, pa.array(events, pa.string())), False)))


def drop_after(block: pa.Table, cutoff: float | None) -> pa.Table:
    """The block without the rows whose timestamp is after `cutoff` (bad rows, without one, are kept)."""
    if cutoff is None:
        return block
    return block.filter(pc.fill_null(pc.less_equal(pc.cast(block["timestamp"], pa.float64()), cutoff), True))


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
