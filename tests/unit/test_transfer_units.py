"""uip.transfer without a server: manifest hashing and checks, retry with backoff, spec URLs."""

from __future__ import annotations

import hashlib

import pytest

from uip.transfer import TransferError, TransferOptions
from uip.transfer.manifest import FileEntry, Manifest, build_manifest, part_range
from uip.transfer.parts import backoff_delay, with_retry


def test_manifest_hashes_each_part_and_the_file(tmp_path):
    data = bytes(range(256)) * 41  # 10496 bytes: parts of 4096, 4096, 2304
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    m = build_manifest(tmp_path, 4096)
    by_path = {f.path: f for f in m.files}
    w = by_path["a/w.bin"]
    assert w.size == len(data) and w.sha256 == hashlib.sha256(data).hexdigest()
    assert w.parts == tuple(hashlib.sha256(data[o:o + n]).hexdigest()
                            for o, n in (part_range(len(data), 4096, i) for i in range(3)))
    assert by_path["empty"].parts == () and by_path["empty"].size == 0
    assert Manifest.from_json(m.to_json(), "here") == m


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "uip-manifest.json"])
def test_manifest_refuses_paths_outside_the_folder(path):
    m = Manifest(4, (FileEntry(path, 1, "0" * 64, ("0" * 64,)),))
    with pytest.raises(TransferError, match="unsafe file path"):
        Manifest.from_json(m.to_json(), "s3://b/p")


def test_manifest_refuses_a_wrong_part_count():
    m = Manifest(4, (FileEntry("f", 9, "0" * 64, ("0" * 64,)),))
    with pytest.raises(TransferError, match="1 part hashes, expected 3"):
        Manifest.from_json(m.to_json(), "s3://b/p")


def test_backoff_doubles_up_to_the_cap():
    opts = TransferOptions(backoff_s=1.0, max_backoff_s=5.0)
    for retry, cap in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        assert cap / 2 <= backoff_delay(opts, retry) <= cap


def test_retry_retries_then_names_what_failed():
    calls, waits, warned = [], [], []
    opts = TransferOptions(attempts=3, backoff_s=1.0,
                           on_retry=lambda what, n, e: warned.append((what, n, str(e))))

    def flaky():
        calls.append(1)
        raise ConnectionError("reset by peer")

    with pytest.raises(TransferError, match=r"f part 2/5: failed after 3 attempts: reset"):
        with_retry("f part 2/5", flaky, opts, sleep=waits.append)
    assert len(calls) == 3 and len(waits) == 2 and waits[1] > waits[0] / 2
    assert [n for _, n, _ in warned] == [1, 2]
    ok = iter([ConnectionError("once"), None])

    def second_time_lucky():
        if (e := next(ok)) is not None:
            raise e
        return "data"

    assert with_retry("g", second_time_lucky, opts, sleep=waits.append) == "data"


def test_spec_names_an_artifact_by_url(monkeypatch, tmp_path):
    from uip.core.paths import resolve_artifact, url_cache_path
    from uip.spec.schema import ModelSpec

    base = {"name": "m", "handler": "a.b:C", "inputs": [], "outputs": []}
    m = ModelSpec.model_validate({**base, "artifact": "s3://models/llm-tiny"})
    assert m.artifact.path == "s3://models/llm-tiny"
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        ModelSpec.model_validate({**base, "artifact": "ftp://host/x"})
    monkeypatch.setenv("UIP_ARTIFACTS", str(tmp_path))
    a, b = url_cache_path("s3://models/llm-tiny"), url_cache_path("https://h/models/llm-tiny")
    assert a != b and a.parent == b.parent == tmp_path / "url-cache"
    assert a.name.startswith("llm-tiny-") and resolve_artifact("s3://models/llm-tiny") == a



def test_unsupported_url_is_named():
    from uip.transfer.stores import open_store

    with pytest.raises(TransferError, match="'ftp://host/x': unsupported URL; use s3://"):
        open_store("ftp://host/x", TransferOptions())
