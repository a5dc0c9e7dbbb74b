"""A 1 GiB model folder pushed and pulled back through a real nginx (range GETs, WebDAV PUT)
and a real S3 endpoint (moto's standalone server), sha256 of every file equal to the source's
(issue 15's round trip; `uip bench transfer --round-trip` runs the same code and prints the
times). Parts of 64 MiB: moto's server holds every part in Python memory (peak RSS ~4.9 GiB
here) and answered CompleteMultipartUpload of the same GiB in 128 parts of 8 MiB with a 500.
Size: UIP_TRANSFER_TEST_GIB_MB (default 1024)."""

from __future__ import annotations

import os

from uip.bench.transfer import MiB, make_folder, round_trip

SIZE_MB = int(os.environ.get("UIP_TRANSFER_TEST_GIB_MB", "1024"))


def test_one_gib_folder_round_trips_through_nginx_and_s3(tmp_path):
    src = tmp_path / "src"
    sizes = make_folder(src, SIZE_MB * MiB)
    assert sum(sizes.values()) == SIZE_MB * MiB
    rows = round_trip(src, tmp_path, part_size_mib=64, parallel=8)
    assert [(store, equal) for store, _, _, equal, _ in rows] == [("nginx", True), ("moto", True)]
