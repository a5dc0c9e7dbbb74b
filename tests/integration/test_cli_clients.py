"""`uip generate` and `uip txt2img` against the session server."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

UIP = [sys.executable, "-c", "from uip.cli import main; main()"]


def test_uip_generate_streams_text(server):
    for protocol, url in (("grpc", server.grpc_url), ("sse", server.http_url)):
        r = subprocess.run([*UIP, "generate", "Hello there", "--protocol", protocol, "--url", url,
                            "--max-tokens", "6"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "finish_reason=" in r.stderr
        assert r.stdout.strip(), "no text streamed"


def test_uip_generate_bad_input_is_one_line(server):
    r = subprocess.run([*UIP, "generate", "Hi", "--url", server.http_url, "--protocol", "http",
                        "--max-tokens", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "max_tokens" in r.stderr and "Traceback" not in r.stderr


def test_uip_txt2img_writes_png(server, tmp_path):
    out = tmp_path / "img.png"
    r = subprocess.run([*UIP, "txt2img", "a red boat", "--steps", "2", "--url", server.grpc_url,
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[2] == 3
