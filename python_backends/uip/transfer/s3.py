"""`s3://bucket/prefix` through boto3 (endpoint from AWS_ENDPOINT_URL, credentials the usual
AWS way): ranged GETs, multipart uploads for files of more than one part."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from uip.transfer.options import TransferError, TransferOptions

MIN_MULTIPART_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
_TRANSIENT = {"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "InternalError",
              "ServiceUnavailable", "RequestTimeTooSkewed"}


class _Final:
    """Turns S3 errors that a retry cannot fix (missing key or bucket, access denied, no
    credentials) into a TransferError naming them; the rest are left to the retries."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> None:  # noqa: ANN001
        if isinstance(error, NoCredentialsError):
            raise TransferError(f"{self.url}: no AWS credentials ({error}); set "
                                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile") from None
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code not in _TRANSIENT and 400 <= status < 500:
                raise TransferError(f"{self.url}/{self.key}: {code or status}: {error}") from None


class S3Store:
    def __init__(self, url: str, options: TransferOptions):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise TransferError(f"{url!r}: no bucket; use s3://bucket/prefix")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.part_size = options.part_size
        # one place for retries (uip.transfer.parts): botocore tries each request once
        config = Config(max_pool_connections=options.parallel + 2,
                        connect_timeout=options.timeout_s, read_timeout=options.timeout_s,
                        retries={"total_max_attempts": 1})
        self.client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                                   config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes:
        with _Final(self.url, key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        rng = f"bytes={offset}-{offset + length - 1}"
        with _Final(self.url, key):
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)
            return obj["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        with _Final(self.url, key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        with _Final(self.url, key), open(path, "rb") as f:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f)

    def start_multipart(self, key: str) -> S3Multipart:
        if self.part_size < MIN_MULTIPART_PART:
            raise TransferError(f"S3 multipart parts must be at least 5 MiB; part size is "
                                f"{self.part_size} bytes (raise --part-size)")
        k = self._key(key)
        with _Final(self.url, key):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=k)["UploadId"]
        return S3Multipart(self.client, self.bucket, k, upload_id)


class S3Multipart:
    def __init__(self, client, bucket: str, key: str, upload_id: str):  # noqa: ANN001
        self.client, self.bucket, self.key, self.upload_id = client, bucket, key, upload_id

    def upload_part(self, number: int, data: bytes) -> str:
        return self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                       PartNumber=number, Body=data)["ETag"]

    def complete(self, tags: dict[int, str]) -> None:
        parts = [{"PartNumber": n, "ETag": tags[n]} for n in sorted(tags)]
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                              UploadId=self.upload_id,
                                              MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                           UploadId=self.upload_id)
