"""`uip artifacts push/pull` against a real nginx (Debian's) started here: WebDAV PUT, range
GETs, `limit_rate` on /slow/. Sizes: UIP_TRANSFER_TEST_MB (default 256 MiB; the benchmark
`uip bench transfer` moves 1 GiB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.transfer import digests, flip_byte, range_header, restore_byte

from uip.bench.nginx import Nginx
from uip.bench.transfer import make_folder
from uip.transfer import TransferError, TransferOptions, pull, push
from uip.transfer.manifest import MANIFEST_NAME, Manifest, part_range
from uip.transfer.pull import sidecar_path, staging_path

MiB = 1024 * 1024
SIZE = int(os.environ.get("UIP_TRANSFER_TEST_MB", "256")) * MiB
PART = 8 * MiB
QUIET = TransferOptions(part_size=PART, progress=False, backoff_s=0.01)
BIG = "weights/model.safetensors"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transfer-http")


@pytest.fixture(scope="module")
def nginx(work):
    served = work / "served"
    served.mkdir()
    with Nginx(served, limit_rate="16m") as server:
        yield server


def _pushed(work: Path, nginx: Nginx, name: str, size: int) -> tuple[dict[str, str], str]:
    """(sha256 of each source file by hashlib, URL) of a folder pushed by WebDAV PUT."""
    src = work / f"{name}-src"
    make_folder(src, size)
    push(src, f"{nginx.url}/{name}", QUIET)
    return digests(src), f"{nginx.url}/{name}"


@pytest.fixture(scope="module")
def pushed(work, nginx) -> tuple[dict[str, str], str]:
    """A SIZE folder at /rt."""
    return _pushed(work, nginx, "rt", SIZE)


@pytest.fixture(scope="module")
def small(work, nginx) -> tuple[dict[str, str], str]:
    """A 3-part folder (3 small files and a 24 MiB one) at /small."""
    return _pushed(work, nginx, "small", 3 * PART)


def _gets(nginx: Nginx, path: str) -> list[str]:
    return [line.range for line in nginx.log() if line.method == "GET" and line.path == path]


def test_round_trip_sha256_equal(work, nginx, pushed):
    src, url = pushed
    assert (nginx.root / "rt" / MANIFEST_NAME).is_file()
    assert digests(nginx.root / "rt") == src  # what PUT stored
    nginx.clear_log()
    dest = work / "rt-pulled"
    r = pull(url, dest, QUIET)
    assert digests(dest) == src
    manifest = Manifest.from_json((dest / MANIFEST_NAME).read_bytes(), url)
    n_parts = sum(len(f.parts) for f in manifest.files)
    assert r.fetched_parts == n_parts and r.fetched_bytes == sum(f.size for f in manifest.files)
    big = next(f for f in manifest.files if f.path == BIG)
    assert sorted(_gets(nginx, f"/rt/{BIG}")) == sorted(
        range_header(*part_range(big.size, PART, i)) for i in range(len(big.parts)))
    assert not staging_path(dest).exists() and not sidecar_path(dest).exists()
    nginx.clear_log()
    again = pull(url, dest, QUIET)  # verified folder of the same manifest: nothing fetched
    assert again.up_to_date and again.fetched_parts == 0
    assert [line.path for line in nginx.log()] == [f"/rt/{MANIFEST_NAME}"]


def test_interrupted_pull_fetches_only_the_rest(work, nginx, pushed):
    """Kill a `uip artifacts pull` (through the throttled /slow/) half way through (SIGKILL),
    then pull again (same folder, unthrottled): only the parts the sidecar does not record are
    fetched, plus one whose bytes on disk were damaged."""
    src, fast_url = pushed
    url = f"{nginx.slow_url}/rt"
    dest = work / "killed"
    manifest = Manifest.from_json((nginx.root / "rt" / MANIFEST_NAME).read_bytes(), url)
    total = sum(len(f.parts) for f in manifest.files)
    uip = str(Path(sys.executable).parent / "uip")
    proc = subprocess.Popen([uip, "artifacts", "pull", url, str(dest), "--parallel", "4",
                             "--no-progress"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                done = json.loads(sidecar_path(dest).read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = {}
            if sum(map(len, done.values())) >= total // 2:
                break
            assert proc.poll() is None, "the pull ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    done = {k: set(v) for k, v in json.loads(sidecar_path(dest).read_text())["done"].items()}
    assert not dest.exists() and 0 < sum(map(len, done.values())) < total
    damaged = min(done[BIG])  # a recorded part whose bytes are no longer right
    flip_byte(staging_path(dest) / BIG, part_range(SIZE, PART, damaged)[0] + 5)
    nginx.clear_log()
    r = pull(fast_url, dest, QUIET)
    big = next(f for f in manifest.files if f.path == BIG)
    expected = {range_header(*part_range(big.size, PART, i))
                for i in range(len(big.parts)) if i not in done[BIG] or i == damaged}
    fetched = _gets(nginx, f"/rt/{BIG}")
    assert sorted(fetched) == sorted(expected)
    assert r.fetched_parts == total - sum(map(len, done.values())) + 1
    assert digests(dest) == src


def test_corrupted_part_on_the_server_is_refetched(work, nginx, small):
    """Flip a byte of one part on the server: the part fails its sha256, a warning is raised and
    the part fetched again (the server's file is repaired before the retry); nothing else is
    fetched twice and the pulled folder matches."""
    src, url = small
    served = nginx.root / "small" / BIG
    bad = 1
    size = served.stat().st_size
    offset = part_range(size, PART, bad)[0] + 100
    old = flip_byte(served, offset)
    retries = []

    def repair(what: str, attempt: int, error: BaseException) -> None:
        retries.append((what, str(error)))
        restore_byte(served, offset, old)

    nginx.clear_log()
    dest = work / "corrupt"
    opts = TransferOptions(part_size=PART, progress=False, backoff_s=0.01, on_retry=repair)
    try:
        pull(url, dest, opts)
    finally:
        restore_byte(served, offset, old)
    assert len(retries) == 1 and f"part {bad + 1}/" in retries[0][0]
    assert "sha256" in retries[0][1]
    fetched = _gets(nginx, f"/small/{BIG}")
    bad_range = range_header(*part_range(size, PART, bad))
    assert fetched.count(bad_range) == 2 and len(fetched) == len(set(fetched)) + 1
    assert digests(dest) == src


def test_persistent_corruption_is_reported_and_never_placed(work, nginx, small):
    _, url = small
    served = nginx.root / "small" / "small-0.json"
    old = flip_byte(served, 10)
    dest = work / "never"
    try:
        with pytest.raises(TransferError, match=r"small-0.json part 1/1: failed after 2 attempts"):
            pull(url, dest, TransferOptions(part_size=PART, progress=False, backoff_s=0.01,
                                            attempts=2))
    finally:
        restore_byte(served, 10, old)
    assert not dest.exists()


def test_serve_pulls_a_spec_url_artifact_once(work, nginx, small, monkeypatch):
    """A spec naming its artifact by URL: `uip serve`'s preparation pulls it into the artifacts
    cache, where the model's settings find and verify it; a second start fetches nothing."""
    from uip.cli import _prepare_artifacts
    from uip.core.paths import url_cache_path
    from uip.core.settings import ModelSettings
    from uip.repo.render import build_repository
    from uip.spec.schema import load_specs

    art, url = small
    sha = art[BIG]
    specs = work / "specs"
    specs.mkdir()
    (specs / "emb.yaml").write_text(f"""\
name: emb
assembly: mono
models:
  - name: emb
    handler: uip.triton.models.embedding:EmbeddingModel
    artifact: {{path: "{url}", sha256: {{"{BIG}": {sha}}}}}
    inputs: [{{name: text_input, dtype: BYTES, dims: [1]}}]
    outputs: [{{name: embedding, dtype: FP32, dims: [4]}}]
""")
    repo = work / "repo"
    build_repository(load_specs(specs), repo)
    monkeypatch.setenv("UIP_ARTIFACTS", str(work / "artifacts"))
    nginx.clear_log()
    _prepare_artifacts(repo, build=False)
    cached = url_cache_path(url)
    assert cached.parent == work / "artifacts" / "url-cache"
    assert digests(cached) == art
    assert {line.path for line in nginx.log()} >= {f"/small/{BIG}"}
    config = {"name": "emb", "parameters": {"artifact": {"string_value": url},
                                            f"artifact.sha256.{BIG}": {"string_value": sha}}}
    assert ModelSettings.from_config(config).artifact_dir() == cached
    nginx.clear_log()
    _prepare_artifacts(repo, build=False)
    assert nginx.log() == []


def test_another_folder_is_replaced_only_with_force(work, small):
    src, url = small
    dest = work / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(TransferError, match="exists and is not the artifact"):
        pull(url, dest, QUIET)
    assert (dest / "mine.txt").read_text() == "keep me"
    pull(url, dest, QUIET, force=True)
    assert digests(dest) == src and not (dest / "mine.txt").exists()
