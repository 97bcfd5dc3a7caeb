"""Sources: format detection and errors, every input format read through the datasource's reader, and
the item text found beside each log."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysys.config import DataConfig
from raysys.data.datasource import read_log_file
from raysys.data.item_text import read_item_text
from raysys.data.sources import resolve_source
from raysys.data.validate import ORDINAL_FILE_SHIFT
from raysys.errors import RaysysError


def read_all(cfg: DataConfig) -> pa.Table:
    """Every normalized row of a log, read in this process (no Ray), in file order."""
    source = resolve_source(cfg)
    return pa.concat_tables([block for f in source.files for block in read_log_file(f, "fail")])


def rows(table: pa.Table, *columns: str) -> list[tuple]:
    data = table.select(list(columns)).to_pydict()
    return list(zip(*(data[c] for c in columns), strict=True))


def write_movielens_100k(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t10\t4\t100\n1\t11\t3\t99\n2\t10\t5\t50\n")
    flags = ["0"] * 19
    toy, heat = flags.copy(), flags.copy()
    toy[3] = toy[4] = toy[5] = "1"  # Animation, Children's, Comedy
    heat[1] = "1"
    (folder / "u.item").write_text(
        f"10|Toy Story (1995)|01-Jan-1995||http://a|{'|'.join(toy)}\n11|Heat (1995)|01-Jan-1995||http://b|{'|'.join(heat)}\n",
        encoding="latin-1",
    )


def test_parquet_file_directory_and_glob(tmp_path: Path) -> None:
    for i in range(2):
        pq.write_table(
            pa.table({"user": [f"u{i}", "007"], "item": ["a", "b"], "ts": [10 + i, 5], "rating": [1.0, 2.5]}),
            tmp_path / f"part-{i}.parquet",
        )
    cols = {"user_col": "user", "item_col": "item", "time_col": "ts"}
    whole = read_all(DataConfig(path=str(tmp_path), **cols))
    assert rows(whole, "user_id", "item_id", "timestamp", "rating") == [
        ("u0", "a", 10, 1.0),
        ("007", "b", 5, 2.5),
        ("u1", "a", 11, 1.0),
        ("007", "b", 5, 2.5),
    ]
    # ordinals: (file index, row in file), in sorted file order
    assert whole["ordinal"].to_pylist() == [0, 1, 1 << ORDINAL_FILE_SHIFT, (1 << ORDINAL_FILE_SHIFT) + 1]
    assert resolve_source(DataConfig(path=str(tmp_path), **cols)).format == "parquet"
    assert read_all(DataConfig(path=str(tmp_path / "part-1.parquet"), **cols)).num_rows == 2
    assert read_all(DataConfig(path=str(tmp_path / "part-*.parquet"), **cols)).num_rows == 4


def test_csv_with_named_columns_event_and_iso_dates(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who;what;when;kind\nu1;i1;2020-01-01T00:00:10;click\nu1;i2;1577836811;buy\n")
    cfg = DataConfig(
        path=str(path),
        csv_delimiter=";",
        user_col="who",
        item_col="what",
        time_col="when",
        rating_col=None,
        event_col="kind",
    )
    source = resolve_source(cfg)
    assert source.format == "csv" and source.has_events and not source.has_ratings
    table = read_all(cfg)
    assert rows(table, "user_id", "item_id", "timestamp", "event") == [
        ("u1", "i1", 1577836810, "click"),
        ("u1", "i2", 1577836811, "buy"),
    ]


def test_movielens_100k_with_item_text(tmp_path: Path) -> None:
    write_movielens_100k(tmp_path / "ml")
    source = resolve_source(DataConfig(path=str(tmp_path / "ml")))
    assert source.format == "movielens" and source.has_ratings and source.item_file.kind == "ml-100k"
    assert rows(read_all(DataConfig(path=str(tmp_path / "ml"))), "user_id", "item_id", "timestamp", "rating") == [
        ("1", "10", 100, 4.0),
        ("1", "11", 99, 3.0),
        ("2", "10", 50, 5.0),
    ]
    text = read_item_text(source.item_file)
    assert text.to_pylist() == [
        {"item_id": "10", "text": "Toy Story (1995) | Animation Children's Comedy"},
        {"item_id": "11", "text": "Heat (1995) | Action"},
    ]


def test_movielens_1m_and_latest(tmp_path: Path) -> None:
    dat, latest = tmp_path / "ml-1m", tmp_path / "ml-latest"
    dat.mkdir(), latest.mkdir()
    (dat / "ratings.dat").write_text("1::10::4::100\n2::11::3::99\n")
    (dat / "movies.dat").write_text(
        "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n11::Heat (1995)::Crime\n", encoding="latin-1"
    )
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,100\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n10,"Heat, The (1995)",(no genres listed)\n')
    assert rows(read_all(DataConfig(path=str(dat))), "user_id", "item_id", "timestamp", "rating") == [
        ("1", "10", 100, 4.0),
        ("2", "11", 99, 3.0),
    ]
    assert read_item_text(resolve_source(DataConfig(path=str(dat))).item_file)["text"].to_pylist() == [
        "Star Wars: Episode IV (1977) | Action Sci-Fi",
        "Heat (1995) | Crime",
    ]
    assert rows(read_all(DataConfig(path=str(latest))), "user_id", "rating") == [("1", 4.5)]
    assert read_item_text(resolve_source(DataConfig(path=str(latest))).item_file)["text"].to_pylist() == [
        "Heat, The (1995)"
    ]


def test_recbole_atomic_files(ml100k_path: Path) -> None:
    cfg = DataConfig(path=str(ml100k_path))
    source = resolve_source(cfg)
    assert source.format == "recbole" and source.has_ratings and source.item_file.kind == "recbole"
    table = read_all(cfg)
    assert table.num_rows == 100_000
    assert rows(table.slice(0, 2), "user_id", "item_id", "timestamp", "rating") == [
        ("196", "242", 881250949, 3.0),
        ("186", "302", 891717742, 3.0),
    ]
    text = read_item_text(source.item_file)
    assert text.num_rows == 1682
    assert text.slice(0, 1).to_pylist() == [{"item_id": "1", "text": "Toy Story | 1995 | Animation Children's Comedy"}]
    only_title = read_item_text(
        resolve_source(DataConfig(path=str(ml100k_path), item_text_fields=["movie_title"])).item_file
    )
    assert only_title["text"][0].as_py() == "Toy Story"


def test_sequence_per_line(tmp_path: Path) -> None:
    path = tmp_path / "seqs.txt"
    path.write_text("u1 a b c\nu2 b  a\n\nu3 c\n")
    table = read_all(DataConfig(path=str(path)))
    assert rows(table, "user_id", "item_id", "timestamp") == [
        ("u1", "a", 0),
        ("u1", "b", 1),
        ("u1", "c", 2),
        ("u2", "b", 0),
        ("u2", "a", 1),
        ("u3", "c", 0),
    ]
    assert table["ordinal"].to_pylist() == list(range(6))


def test_item_path_table_and_text_field_selection(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    items = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": ["i1", "i2", "i1"],
                "title": ["One", "Two", "dup"],
                "brand": ["Acme", None, "x"],
                "price": [1.0, 2.0, 3.0],
            }
        ),
        items,
    )
    text = read_item_text(resolve_source(DataConfig(path=str(log), item_path=str(items))).item_file)
    assert text.to_pylist() == [{"item_id": "i1", "text": "One | Acme"}, {"item_id": "i2", "text": "Two"}]
    only = read_item_text(
        resolve_source(DataConfig(path=str(log), item_path=str(items), item_text_fields=["brand"])).item_file
    )
    assert only.to_pylist() == [{"item_id": "i1", "text": "Acme"}]
    with pytest.raises(RaysysError, match="item_text_fields.*'color'"):
        read_item_text(
            resolve_source(DataConfig(path=str(log), item_path=str(items), item_text_fields=["color"])).item_file
        )


def test_format_detection_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(RaysysError, match="cannot tell the log format"):
        resolve_source(DataConfig(path=str(tmp_path)))
    with pytest.raises(RaysysError, match="no such file or directory"):
        resolve_source(DataConfig(path=str(tmp_path / "missing.csv")))
    with pytest.raises(RaysysError, match="glob matches no file"):
        resolve_source(DataConfig(path=str(tmp_path / "*.parquet")))
    with pytest.raises(RaysysError, match="data.path is not set"):
        resolve_source(DataConfig(format="csv"))
