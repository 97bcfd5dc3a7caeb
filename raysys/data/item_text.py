"""Item text: the side file beside an interaction log read into (item_id, text) rows, one per item.

    recbole   <name>.item: token / token_seq fields (data.item_text_fields picks others)
    ml-100k   u.item: title, release date, genres;  ml-1m: movies.dat;  ml-csv: movies.csv
    table     Parquet / CSV with an item id column (the synthetic log's items file)

Fields are joined with ' | ' (e.g. 'Toy Story | 1995 | Animation Children's Comedy').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from raysys.data.sources import LINE_DELIMITER, ItemFile, arrow_message, first_line
from raysys.errors import RaysysError

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


def read_item_text(item_file: ItemFile | None) -> pa.Table | None:
    """Item side information as (item_id string, text string), one row per item that has text; the
    fields are joined with ' | ' (e.g. 'Toy Story | 1995 | Animation Children's Comedy')."""
    if item_file is None:
        return None
    try:
        table = _ITEM_READERS[item_file.kind](item_file)
    except (pa.ArrowException, OSError) as exc:
        raise RaysysError(f"cannot read the item file ({arrow_message(exc)})", where=item_file.path) from None
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
    header = first_line(Path(item_file.path)).split("\t")
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
