"""Locations that are local paths or object-store URIs (`s3://bucket/key`, `gs://bucket/key`).

    fs, path = filesystem("s3://bucket/run")          # a pyarrow FileSystem and the path inside it
    upload_dir(Path("/tmp/stage/teacher"), "s3://bucket/run/teacher")
    download_dir("s3://bucket/run", Path("/tmp/stage"))   # False when nothing is there

The stages themselves read and write local directories (Ray Train, DeepSpeed and the model
directory all want files); a run whose `--out` is a URI is staged in a local directory and each
finished stage is uploaded. S3 settings come from the standard AWS environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION / AWS_DEFAULT_REGION) plus AWS_ENDPOINT_URL_S3
or AWS_ENDPOINT_URL for an S3-compatible server (MinIO, moto, Ceph); Google Cloud Storage uses
pyarrow's default credentials.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysys.errors import RaysysError

REMOTE_SCHEMES = ("s3", "gs", "gcs")
DEFAULT_STAGING_ROOT = "~/.cache/raysys/staging"


def is_uri(location: str | os.PathLike[str] | None) -> bool:
    """True for an object-store URI (s3://, gs://, gcs://); False for a local path or None."""
    return isinstance(location, str) and urlparse(location).scheme in REMOTE_SCHEMES


def join(uri: str, *parts: str) -> str:
    """`uri` with path parts appended: join("s3://b/run", "student", "model") -> "s3://b/run/student/model"."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `uri` and the path inside it ("bucket/key")."""
    parsed = urlparse(uri)
    if parsed.scheme not in REMOTE_SCHEMES or not parsed.netloc:
        raise RaysysError(f"not an object-store URI: {uri!r}", hint="use s3://bucket/path or gs://bucket/path")
    path = f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "s3":
        return _s3_filesystem(), path
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise RaysysError(f"cannot open the filesystem ({exc})", where=uri) from None
    return fs, path.rstrip("/")


def _s3_filesystem() -> pafs.S3FileSystem:
    """S3 with the endpoint and region of the standard AWS environment variables (credentials: AWS's chain)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    parsed = urlparse(endpoint)
    return pafs.S3FileSystem(
        endpoint_override=parsed.netloc or parsed.path,
        scheme=parsed.scheme or "https",
        region=region,
        allow_bucket_creation=False,
    )


def exists(uri: str) -> bool:
    """True when `uri` names an existing file or directory."""
    fs, path = filesystem(uri)
    return _call(uri, lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_text(uri: str) -> str:
    """The whole file at `uri` as UTF-8 text."""
    fs, path = filesystem(uri)

    def read() -> str:
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    return _call(uri, read)


def list_files(uri: str) -> dict[str, int]:
    """The files directly under the directory `uri`: name -> size in bytes ({} when there is none)."""
    fs, path = filesystem(uri)
    infos = _call(uri, lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    return {info.base_name: info.size for info in infos if info.type == pafs.FileType.File}


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The Parquet file at `uri` (only `columns` when given)."""
    fs, path = filesystem(uri)
    return _call(uri, lambda: pq.read_table(path, filesystem=fs, columns=columns))


def upload_dir(local: Path, uri: str) -> None:
    """Replace the contents of `uri` with the files of the local directory `local` (recursively)."""
    fs, path = filesystem(uri)

    def upload() -> None:
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        pafs.copy_files(str(local.resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    _call(uri, upload)


def upload_file(local: Path, uri: str) -> None:
    """Copy the local file `local` to `uri` (replacing it)."""
    fs, path = filesystem(uri)
    _call(
        uri,
        lambda: pafs.copy_files(
            str(local.resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        ),
    )


def download_dir(uri: str, local: Path) -> bool:
    """Copy the directory `uri` into `local` (created); False when `uri` does not exist."""
    fs, path = filesystem(uri)
    info = _call(uri, lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        return False
    local.mkdir(parents=True, exist_ok=True)
    _call(
        uri,
        lambda: pafs.copy_files(
            path, str(local.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        ),
    )
    return True


def download(uri: str, local: Path) -> Path:
    """Copy the file or directory at `uri` to `local` (replacing it); returns `local`."""
    fs, path = filesystem(uri)
    info = _call(uri, lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        raise RaysysError("no such file or directory", where=uri, hint="check the URI and the bucket")
    if local.is_dir():
        shutil.rmtree(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.Directory:
        download_dir(uri, local)
    else:
        _call(
            uri,
            lambda: pafs.copy_files(
                path, str(local.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
            ),
        )
    return local


def local_mirror(uri: str, root: str | Path) -> Path:
    """A stable local path for `uri` under `root` (the same URI always maps to the same place, so
    caches keyed by local paths keep hitting): root/<hash of the URI>/<last path part>."""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    name = urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1] or "root"
    return Path(root).expanduser() / key / name


def staging_dir(uri: str, root: str | Path = DEFAULT_STAGING_ROOT) -> Path:
    """The local directory a run whose output is `uri` is staged in."""
    return local_mirror(uri, root)


def _call(uri: str, fn):
    """Run a filesystem call, turning pyarrow's OSError (no bucket, no credentials, unreachable
    endpoint) into a RaysysError that names the URI."""
    try:
        return fn()
    except OSError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RaysysError(
            f"object-store access failed ({message})",
            where=uri,
            hint="check the bucket, the credentials and AWS_ENDPOINT_URL",
        ) from None
