"""Validation of interaction logs: file-level checks, per-row checks and the normalized row block.

Every reader turns its raw rows into one *normalized block* (`normalize_rows`), the only row format
the rest of the pipeline sees:

    user_id    dictionary<int32, string>   null for a bad row
    item_id    dictionary<int32, string>   null for a bad row
    timestamp  int64                       seconds (sequence-per-line input: the position)
    ordinal    int64                       file_index * 2**40 + row index in the file: the tie-breaker
    rating     float32                     only when the log has ratings
    event      dictionary<int32, string>   only when the log has an event column
    reason     int8                        0 = good row, else 1 + REASONS.index(why it is bad);
                                           UNREADABLE marks where a file could not be read further

Problems travel as data, not exceptions: a Ray task marks bad rows and carries on, and the driver
raises the `RaysysError` (data.on_bad_rows=fail) or drops and counts them (data.on_bad_rows=drop). An
exception raised inside a Ray task reaches the driver wrapped, with the worker's traceback in its text
and Ray Data's error log beside it, which is not the one-line message a person should get. The
driver words a message by re-reading the offending row (`bad_row_error`, `duplicate_error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.errors import RaysysError

REASONS = (
    "missing_user_id",
    "missing_item_id",
    "missing_timestamp",
    "unparsable_timestamp",
    "negative_timestamp",
    "bad_rating",
    "duplicate",
)
# Reason codes on rows (0 = good). A duplicate is found after the shuffle, so "duplicate" is only a count.
MISSING_USER, MISSING_ITEM, MISSING_TIME, UNPARSABLE_TIME, NEGATIVE_TIME, BAD_RATING = range(1, 7)
UNREADABLE = 8  # not a row problem: the file could not be read past this row
ORDINAL_FILE_SHIFT = 40  # rows per file < 2**40; files < 2**23
DROP_HINT = "fix the file, or set data.on_bad_rows=drop to drop such rows (they are counted in summary.json)"
NUMBER_PATTERN = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d")
TYPE_FAMILIES = {
    "integer": pa.types.is_integer,
    "float": pa.types.is_floating,
    "string": pa.types.is_string,
    "large string": pa.types.is_large_string,
    "timestamp": pa.types.is_timestamp,
    "date": pa.types.is_date,
}
ALLOWED_FAMILIES = {  # what a column of each role may hold
    "user_id": ("integer", "string"),
    "item_id": ("integer", "string"),
    "timestamp": ("integer", "float", "timestamp", "date", "string"),
    "rating": ("integer", "float", "string"),
    "event": ("integer", "string"),
}


@dataclass(frozen=True)
class FileRows:
    """How one input file's rows are named in messages and numbered in ordinals."""

    path: str
    file_index: int
    header_lines: int = 0  # lines before the first row (row r is on line r + header_lines + 1)
    unit: str = "line"  # a row is a 'line' of delimited text (blank lines not counted), a Parquet 'row',
    #                     or an 'interaction' (an item of a sequence-per-line file)
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> name in the file

    def row_label(self, row: int) -> str:
        """'line 18', 'row 17' or 'interaction 17' for the 0-based data row `row`."""
        return f"{self.unit} {row + self.header_lines + 1}"

    def field_label(self, canonical: str) -> str:
        name = self.columns.get(canonical)
        return f"{canonical.replace('_', ' ')} (column {name!r})" if name else canonical.replace("_", " ")


def make_ordinal(file_index: int, first_row: int, num_rows: int) -> pa.Array:
    """[num_rows] int64: the global position of each row, ordered by (file index, row in file)."""
    start = (file_index << ORDINAL_FILE_SHIFT) + first_row
    return pa.array(np.arange(start, start + num_rows, dtype=np.int64))


def split_ordinal(ordinal: int) -> tuple[int, int]:
    """(file index, 0-based row in the file) of an ordinal."""
    return ordinal >> ORDINAL_FILE_SHIFT, ordinal & ((1 << ORDINAL_FILE_SHIFT) - 1)


def normalize_rows(raw: pa.Table, rows: FileRows, first_row: int) -> pa.Table:
    """Turn a raw table (canonical columns user_id, item_id, timestamp [, rating, event]) into a
    normalized block (module docstring); bad rows are marked with their reason, never raised."""
    users, user_missing = ids_as_dictionary(raw["user_id"])
    items, item_missing = ids_as_dictionary(raw["item_id"])
    timestamps, reason = parse_timestamps(raw["timestamp"])
    columns: dict[str, pa.Array] = {}
    if "rating" in raw.column_names:
        ratings, rating_ok = parse_numbers(raw["rating"])
        columns["rating"] = pa.array(ratings.astype(np.float32))
        reason[~rating_ok & (reason == 0)] = BAD_RATING
    reason[item_missing] = MISSING_ITEM
    reason[user_missing] = MISSING_USER
    if "event" in raw.column_names:
        columns["event"] = pc.dictionary_encode(pc.cast(raw["event"], pa.string()).combine_chunks())
    bad = reason != 0
    if bad.any():
        users, items = _null_where(users, bad), _null_where(items, bad)
    return pa.table(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": pa.array(timestamps),
            "ordinal": make_ordinal(rows.file_index, first_row, raw.num_rows),
            **columns,
            "reason": pa.array(reason),
        }
    )


def unreadable_block(template: pa.Schema, file_index: int, row: int) -> pa.Table:
    """A one-row block marking that a file could not be read from `row` on (same schema as its rows)."""
    columns = {name: pa.nulls(1, template.field(name).type) for name in template.names}
    columns["ordinal"] = make_ordinal(file_index, row, 1)
    columns["reason"] = pa.array([UNREADABLE], pa.int8())
    return pa.table(columns, schema=template)


def normalized_schema(has_ratings: bool, has_events: bool) -> pa.Schema:
    """The schema of every normalized block of a log."""
    ids = pa.dictionary(pa.int32(), pa.string())
    fields = [("user_id", ids), ("item_id", ids), ("timestamp", pa.int64()), ("ordinal", pa.int64())]
    fields += [("rating", pa.float32())] if has_ratings else []
    fields += [("event", ids)] if has_events else []
    return pa.schema([*fields, ("reason", pa.int8())])


def ids_as_dictionary(values: pa.ChunkedArray | pa.Array) -> tuple[pa.DictionaryArray, np.ndarray]:
    """IDs as a dictionary array of strings (original spelling kept) and a [n] bool mask of missing IDs
    (null, empty or blank). Works on the dictionary, so a Parquet dictionary column is never decoded."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    if not pa.types.is_string(values.type.value_type):
        values = pa.DictionaryArray.from_arrays(values.indices, pc.cast(values.dictionary, pa.string()))
    blank = pc.fill_null(pc.utf8_is_space(values.dictionary), True)
    blank = pc.or_(blank, pc.equal(pc.utf8_length(values.dictionary), 0)).to_numpy(zero_copy_only=False)
    missing = np.asarray(values.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if blank.any():
        missing |= blank[pc.fill_null(values.indices, 0).to_numpy()]
    return values, missing


def parse_timestamps(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as [n] int64 seconds and [n] int8 reason codes (0 = fine).

    Accepts integer or float seconds, Arrow timestamps/dates, and strings holding a number or an
    ISO-8601 date ('2020-01-31', '2020-01-31T10:00:00'). Floats are floored to whole seconds.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.dictionary_decode(), kind.value_type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        values = pc.cast(values, pa.timestamp("s"), safe=False)
        kind = pa.int64()
        values = values.view(pa.int64())
    if pa.types.is_integer(kind):
        seconds = pc.fill_null(pc.cast(values, pa.int64()), 0).to_numpy()
        reason = np.where(values.is_null().to_numpy(zero_copy_only=False), MISSING_TIME, 0).astype(np.int8)
        reason[(reason == 0) & (seconds < 0)] = NEGATIVE_TIME
        return seconds, reason
    if pa.types.is_floating(kind):
        numbers = pc.fill_null(pc.cast(values, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        return _seconds_from_floats(numbers, np.isnan(numbers))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _seconds_from_strings(values)
    raise RaysysError(
        f"timestamp column has type {kind}; expected integer or float seconds, a timestamp or "
        "date type, or date strings"
    )


def _seconds_from_floats(numbers: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(numbers)
    seconds = np.floor(np.where(finite, numbers, 0.0)).astype(np.int64)
    reason = np.zeros(len(numbers), dtype=np.int8)
    reason[~finite] = UNPARSABLE_TIME
    reason[missing] = MISSING_TIME
    reason[(reason == 0) & (seconds < 0)] = NEGATIVE_TIME
    return seconds, reason


def _seconds_from_strings(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    try:  # the common case: every row a plain integer
        ints = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ints = None
    if ints is not None and ints.null_count == 0:
        seconds = ints.to_numpy()
        return seconds, np.where(seconds < 0, NEGATIVE_TIME, 0).astype(np.int8)
    numbers, is_number = parse_numbers(values)
    missing = np.asarray(pc.fill_null(pc.utf8_is_space(values), True).to_numpy(zero_copy_only=False), dtype=bool)
    missing |= np.asarray(pc.equal(pc.utf8_length(pc.fill_null(values, "")), 0).to_numpy(zero_copy_only=False))
    dates = [pc.strptime(values, format=f, unit="s", error_is_null=True) for f in DATE_FORMATS]
    date_seconds = pc.cast(pc.coalesce(*dates), pa.int64())
    is_date = date_seconds.is_valid().to_numpy(zero_copy_only=False)
    numbers = np.where(is_number, numbers, pc.fill_null(date_seconds, 0).to_numpy().astype(np.float64))
    seconds, reason = _seconds_from_floats(numbers, missing)
    reason[~is_number & ~is_date & ~missing] = UNPARSABLE_TIME
    return seconds, reason


def parse_numbers(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """[n] float64 values and an [n] bool mask of rows holding a finite number (numeric or string input)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        is_number = pc.fill_null(pc.match_substring_regex(values, NUMBER_PATTERN), False)
        values = pc.if_else(
            is_number, pc.cast(pc.utf8_trim_whitespace(pc.if_else(is_number, values, "0")), pa.float64()), None
        )
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise RaysysError(f"expected a numeric column, got type {values.type}")
    numbers = pc.fill_null(pc.cast(values, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    return numbers, np.isfinite(numbers)


def _null_where(values: pa.DictionaryArray, mask: np.ndarray) -> pa.DictionaryArray:
    """Null the masked rows and drop dictionary entries only those rows used (so vocabularies never
    see an ID that occurs only in bad rows)."""
    indices = pc.if_else(pa.array(mask), pa.scalar(None, values.indices.type), values.indices)
    used = np.zeros(len(values.dictionary), dtype=bool)
    used[pc.drop_null(indices).to_numpy()] = True
    remap = np.cumsum(used, dtype=np.int32) - 1
    indices = pc.take(pa.array(remap), indices)
    return pa.DictionaryArray.from_arrays(indices, values.dictionary.filter(pa.array(used)))


def bad_row_error(rows: FileRows, row: int, reason: int, raw: dict[str, object]) -> RaysysError:
    """The one-line error for bad row `row` of a file; `raw` holds its values as read (canonical names)."""

    def shown(col: str) -> str:
        return f"{rows.field_label(col)} {raw.get(col)!r}"

    problems = {
        MISSING_USER: f"{rows.field_label('user_id')} is empty",
        MISSING_ITEM: f"{rows.field_label('item_id')} is empty",
        MISSING_TIME: f"{rows.field_label('timestamp')} is missing",
        UNPARSABLE_TIME: f"{shown('timestamp')} is not a number of seconds or an ISO date",
        NEGATIVE_TIME: f"{shown('timestamp')} is negative",
        BAD_RATING: f"{shown('rating')} is not a number",
    }
    return RaysysError(f"{rows.row_label(row)}: {problems[reason]}", where=rows.path, hint=DROP_HINT)


def duplicate_error(first: tuple[FileRows, int], second: tuple[FileRows, int], raw: dict[str, object]) -> RaysysError:
    """The error for a row repeating an earlier row's user, item and timestamp (`raw`: the row's values)."""
    (rows_a, row_a), (rows_b, row_b) = first, second
    where_b = rows_b.row_label(row_b) if rows_b.path == rows_a.path else f"{rows_b.path} {rows_b.row_label(row_b)}"
    return RaysysError(
        f"{rows_a.row_label(row_a)} and {where_b} are the same interaction (user {raw.get('user_id')!r}, item "
        f"{raw.get('item_id')!r}, timestamp {raw.get('timestamp')!r}); repeated consumption must differ in time",
        where=rows_a.path,
        hint=DROP_HINT,
    )


def type_family(kind: pa.DataType) -> str:
    """A coarse type name ('integer', 'float', 'string', ...): int32 vs int64 is not a type change."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    for name, test in TYPE_FAMILIES.items():
        if test(kind):
            return "string" if name == "large string" else name
    return str(kind)


def check_same_types(schemas: list[tuple[str, pa.Schema]], columns: list[str]) -> None:
    """Raise if one of `columns` changes type family between files (e.g. int64 in one, string in another)."""
    for column in columns:
        seen: tuple[str, str] | None = None
        for path, schema in schemas:
            if column not in schema.names:
                continue
            family = type_family(schema.field(column).type)
            if seen is None:
                seen = (path, family)
            elif family != seen[1]:
                raise RaysysError(
                    f"column {column!r} is {family} here but {seen[1]} in {seen[0]}",
                    where=path,
                    hint="make the column the same type in every file",
                )


def check_columns(path: str, names: list[str], required: dict[str, str]) -> None:
    """Raise naming the file and the missing columns when a required column is absent.

    `required` maps config keys (user_col, item_col, time_col) to the column names they ask for."""
    missing = [f"{col!r} ({role}, data.{key})" for key, (role, col) in _roles(required).items() if col not in names]
    if missing:
        raise RaysysError(
            f"missing column(s) {', '.join(missing)}; the file has {names}",
            where=path,
            hint="set data.user_col, data.item_col, data.time_col to the file's columns",
        )


def _roles(required: dict[str, str]) -> dict[str, tuple[str, str]]:
    labels = {"user_col": "user id", "item_col": "item id", "time_col": "timestamp"}
    return {key: (labels.get(key, key), col) for key, col in required.items()}


def check_value_types(path: str, schema: pa.Schema, columns: dict[str, str]) -> None:
    """Raise when a column's type cannot hold its role (e.g. a boolean timestamp column).

    `columns` maps canonical names to the file's column names."""
    for canonical, name in columns.items():
        family = type_family(schema.field(name).type)
        if family not in ALLOWED_FAMILIES[canonical]:
            raise RaysysError(
                f"column {name!r} ({canonical.replace('_', ' ')}) has type {schema.field(name).type}; "
                f"expected {' or '.join(ALLOWED_FAMILIES[canonical])}",
                where=path,
            )
