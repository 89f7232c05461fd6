"""Where a prepared stream lives: a local folder or ``s3://bucket/prefix``, and its description file.

litdata reads and writes the shards itself (boto3 for ``s3://``: credentials and endpoint as boto3
finds them, e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, or ``data.storage_options``). This module reads and writes the one small
JSON file beside the shards that says what they hold, with the same client.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open

STREAM_FILE = "vggtune_stream.json"
STREAM_FORMAT = "vggtune-stream"
STREAM_VERSION = 1


def allow_plain_http(storage_options: dict | None = None) -> None:
    """Let litdata's obstore transfers use an ``http://`` endpoint (a local MinIO, a test server).

    litdata (0.2.76) moves shards with obstore, building its ``S3Store`` with the boto3 client's
    endpoint and its own ``client_options``, which leave out ``allow_http``: obstore then refuses a
    plain-HTTP endpoint with "BadScheme" (obstore #159 shows the same error). boto3 itself is fine.
    """
    endpoint = (
        (storage_options or {}).get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or ""
    )
    if str(endpoint).startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"  # a module-level dict that every store reads


def is_remote(url: str) -> bool:
    """Whether ``url`` names object storage (``s3://...``) rather than a local folder."""
    return "://" in str(url)


def normalise(url: str) -> str:
    """A local folder as an absolute path (``~`` expanded); ``s3://bucket/prefix`` without a trailing slash."""
    url = str(url).strip()
    if not url:
        raise UserError("data.stream is empty: pass data.stream=<folder or s3://bucket/prefix> made by vggtune prepare")
    if is_remote(url):
        if not url.startswith("s3://") or not url[5:].strip("/"):
            raise UserError(
                f"{url}: streams are read from a local folder or s3://bucket/prefix (an S3-compatible "
                "server: set AWS_ENDPOINT_URL)"
            )
        return url.rstrip("/")
    return str(Path(url).expanduser().resolve())


def join(url: str, name: str) -> str:
    """``url/name`` for a folder or an ``s3://`` prefix."""
    return f"{url}/{name}" if is_remote(url) else str(Path(url) / name)


def _s3(storage_options: dict | None):
    import boto3  # litdata's own dependency

    return boto3.client("s3", **(storage_options or {}))


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def read_json(url: str, storage_options: dict | None = None) -> dict | None:
    """The stream's description file at ``url``, or None when there is none."""
    target = join(url, STREAM_FILE)
    if not is_remote(url):
        path = Path(target)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    import botocore.exceptions

    bucket, key = _bucket_key(target)
    try:
        body = _s3(storage_options).get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise UserError(f"could not read {target}: {e}") from None
    except botocore.exceptions.BotoCoreError as e:  # no endpoint, no credentials
        raise UserError(
            f"could not read {target}: {e} (set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or data.storage_options)"
        ) from None
    return json.loads(body)


def write_json(url: str, content: dict, storage_options: dict | None = None) -> None:
    """Write the description file last: a stream without it is an unfinished one."""
    text = json.dumps(content, indent=1)
    target = join(url, STREAM_FILE)
    if not is_remote(url):
        with atomic_open(target, "w", encoding="utf-8") as f:
            f.write(text)
        return
    bucket, key = _bucket_key(target)
    _s3(storage_options).put_object(Bucket=bucket, Key=key, Body=text.encode())


def check_empty_output(url: str, storage_options: dict | None = None) -> None:
    """Refuse to write a stream over files that are already there."""
    if is_remote(url):
        bucket, prefix = _bucket_key(url)
        try:
            listed = _s3(storage_options).list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1)
        except Exception as e:  # noqa: BLE001 - boto3's errors for a missing bucket, endpoint or credentials
            raise UserError(
                f"cannot write to {url}: {str(e).splitlines()[0]} (the bucket must exist; set "
                "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "data.storage_options)"
            ) from None
        if listed.get("KeyCount", 0):
            raise UserError(f"output {url} already holds objects: choose another prefix, or delete them first")
        return
    path = Path(url)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise UserError(f"output {path} already holds files: choose another folder, or remove it first")


def read_info(url: str, storage_options: dict | None = None) -> dict:
    """The checked description of the prepared stream at ``url`` (a one-line error if it is not one)."""
    info = read_json(url, storage_options)
    if info is None or info.get("format") != STREAM_FORMAT:
        raise UserError(
            f"data.stream {url} is not a prepared stream (no {STREAM_FILE}): make one with "
            f"vggtune prepare data.root=<images> output={url}"
        )
    if info.get("version") != STREAM_VERSION:
        raise UserError(
            f"data.stream {url} was written by another vggtune (stream format {info.get('version')}, "
            f"this one reads {STREAM_VERSION}): prepare it again"
        )
    return info
