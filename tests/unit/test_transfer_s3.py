"""`uip artifacts push/pull` against a real S3 endpoint: moto's standalone server (moto_server,
a subprocess on a free port; no MinIO package reaches these machines), found by boto3 through
AWS_ENDPOINT_URL. Size: UIP_TRANSFER_TEST_S3_MB (default 64 MiB: moto holds objects in Python
and serves them through werkzeug, far slower than nginx; 1024 runs the 1 GiB round trip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from support.transfer import digests, range_header

from uip.bench.moto import MotoServer
from uip.bench.transfer import make_folder
from uip.transfer import TransferOptions, pull, push
from uip.transfer.manifest import MANIFEST_NAME, Manifest, part_range
from uip.transfer.pull import sidecar_path

MiB = 1024 * 1024
SIZE = int(os.environ.get("UIP_TRANSFER_TEST_S3_MB", "64")) * MiB
PART = 8 * MiB
QUIET = TransferOptions(part_size=PART, progress=False, backoff_s=0.01)
BIG = "weights/model.safetensors"


class Interrupted(Exception):
    """Stands for Ctrl-C in the middle of a pull."""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=server.url)
        client.create_bucket(Bucket="models")
        yield server, client
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, s3) -> tuple[Path, str]:
    src = tmp_path_factory.mktemp("transfer-s3") / "src"
    make_folder(src, SIZE)
    r = push(src, "s3://models/llm-big", QUIET)
    assert r.multipart_files == 1  # the large file went up in parts
    return src, "s3://models/llm-big"


def test_round_trip_sha256_equal(tmp_path, s3, pushed):
    src, url = pushed
    _, client = s3
    head = client.head_object(Bucket="models", Key=f"llm-big/{BIG}")
    assert head["ContentLength"] == SIZE - 6000
    assert head["ETag"].strip('"').endswith(f"-{-(-(SIZE - 6000) // PART)}")  # multipart ETag
    dest = tmp_path / "pulled"
    r = pull(url, dest, QUIET)
    assert digests(dest) == digests(src)
    manifest = Manifest.from_json((dest / MANIFEST_NAME).read_bytes(), url)
    assert r.fetched_parts == sum(len(f.parts) for f in manifest.files)


def test_interrupted_pull_fetches_only_the_rest(tmp_path, s3, pushed):
    src, url = pushed
    dest = tmp_path / "resumed"
    seen = []

    def stop_half_way(path: str, index: int) -> None:
        seen.append((path, index))
        if len(seen) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        pull(url, dest, TransferOptions(part_size=PART, progress=False, parallel=2,
                                        on_part=stop_half_way))
    assert not dest.exists()
    done = json.loads(sidecar_path(dest).read_text())["done"]
    n_done = sum(map(len, done.values()))
    assert n_done >= 3
    raw = s3[1].get_object(Bucket="models", Key=f"llm-big/{MANIFEST_NAME}")["Body"].read()
    manifest = Manifest.from_json(raw, url)
    total = sum(len(f.parts) for f in manifest.files)
    server = s3[0]
    server.record()
    r = pull(url, dest, QUIET)
    seen_by_s3 = server.requests()
    ranged = [(path, rng) for method, path, rng in seen_by_s3 if method == "GET" and rng]
    expected = [(f"/models/llm-big/{f.path}", range_header(*part_range(f.size, PART, i)))
                for f in manifest.files for i in range(len(f.parts))
                if i not in done.get(f.path, ())]
    assert sorted(ranged) == sorted(expected) and 0 < len(expected) < total
    assert r.fetched_parts == total - n_done
    assert digests(dest) == digests(src)


def test_cli_push_then_pull_and_a_missing_prefix_fails_at_once(tmp_path, s3):
    """`uip artifacts push/pull` as a user runs them; a prefix with nothing pushed fails with
    one line naming it, after a single request (a missing key is not retried)."""
    server, _ = s3
    src = tmp_path / "src"
    make_folder(src, 12 * MiB, small_files=1)
    from typer.testing import CliRunner

    from uip.cli import app

    r = CliRunner().invoke(app, ["artifacts", "push", str(src), "s3://models/cli",
                                 "--part-size-mib", "5", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "pushed 2 files" in r.output and "1 multipart" in r.output
    r = CliRunner().invoke(app, ["artifacts", "pull", "s3://models/cli", str(tmp_path / "dest"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert digests(tmp_path / "dest") == digests(src)
    uip = [sys.executable, "-c", "from uip.cli import main; main()"]
    server.record()
    r = subprocess.run([*uip, "artifacts", "pull", "s3://models/nothing-here",
                        str(tmp_path / "x"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "s3://models/nothing-here/uip-manifest.json: NoSuchKey" in r.stderr
    assert len(server.requests()) == 1 and not (tmp_path / "x").exists()
