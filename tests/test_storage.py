"""raysys.storage against a local S3-compatible server (moto, 127.0.0.1): URIs, upload, download, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysys import storage
from raysys.errors import RaysysError

BUCKET = "raysys-test"


@pytest.fixture(scope="module")
def s3_endpoint(s3_server):
    """The session's moto S3 server (tests/conftest.py) with this module's bucket."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return s3_server


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_uri_helpers() -> None:
    assert storage.is_uri("s3://bucket/run") and storage.is_uri("gs://bucket/x")
    assert not storage.is_uri("runs/x") and not storage.is_uri("/abs/x") and not storage.is_uri(None)
    assert storage.join("s3://b/run/", "student", "/model") == "s3://b/run/student/model"
    one, two = storage.local_mirror("s3://b/run", "/tmp/x"), storage.local_mirror("s3://b/run/", "/tmp/x")
    assert one == two and one.name == "run" and one.parent.parent == Path("/tmp/x")
    assert storage.local_mirror("s3://b/other", "/tmp/x") != one
    with pytest.raises(RaysysError, match="not an object-store URI"):
        storage.filesystem("runs/x")


def test_upload_download_roundtrip(tmp_path: Path, s3_endpoint: str) -> None:
    local = tmp_path / "stage"
    (local / "model" / "nested").mkdir(parents=True)
    (local / "summary.json").write_text('{"a": 1}')
    (local / "model" / "nested" / "w.bin").write_text("weights")
    uri = f"s3://{BUCKET}/run/teacher"

    storage.upload_dir(local, uri)

    assert storage.exists(f"{uri}/model/nested/w.bin") and not storage.exists(f"{uri}/missing")
    assert storage.read_text(f"{uri}/summary.json") == '{"a": 1}'
    down = tmp_path / "down"
    assert storage.download_dir(f"s3://{BUCKET}/run", down)
    assert _tree(down / "teacher") == _tree(local)
    assert not storage.download_dir(f"s3://{BUCKET}/nothing-here", tmp_path / "none")


def test_upload_replaces_stale_files(tmp_path: Path, s3_endpoint: str) -> None:
    local = tmp_path / "stage"
    local.mkdir()
    (local / "old.txt").write_text("old")
    uri = f"s3://{BUCKET}/replace"
    storage.upload_dir(local, uri)
    (local / "old.txt").unlink()
    (local / "new.txt").write_text("new")

    storage.upload_dir(local, uri)

    assert storage.exists(f"{uri}/new.txt") and not storage.exists(f"{uri}/old.txt")


def test_download_file_and_upload_file(tmp_path: Path, s3_endpoint: str) -> None:
    source = tmp_path / "log.csv"
    source.write_text("user_id,item_id\n")
    storage.upload_file(source, f"s3://{BUCKET}/data/log.csv")

    copy = storage.download(f"s3://{BUCKET}/data/log.csv", tmp_path / "copy" / "log.csv")

    assert copy.read_text() == "user_id,item_id\n"
    with pytest.raises(RaysysError, match="no such file"):
        storage.download(f"s3://{BUCKET}/data/absent.csv", tmp_path / "absent.csv")


def test_missing_bucket_is_a_user_error(tmp_path: Path, s3_endpoint: str) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RaysysError, match="object-store access failed"):
        storage.upload_dir(tmp_path, "s3://no-such-bucket-here/run")
