#!/usr/bin/env python3
"""Text to image through the `stable_diffusion` model; writes a PNG.

  clients/txt2img.py "a photo of an astronaut riding a horse" -o astronaut.png \
      --steps 25 --scheduler dpm++ --seed 7 [--negative "blurry"] [--guidance 7.5] \
      [--height 64 --width 64] [--url localhost:8001 | --protocol http --url localhost:8000]

Options left out are not sent, so the server's defaults apply (seed 0, 50 steps, CFG 7.5, the
artifact's scheduler and size). Exit status 2 on a refused request (the message says why).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    from uip.clients.sd import infer_inputs
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backends"))
    from uip.clients.sd import infer_inputs

SCHEDULERS = ["ddim", "euler", "euler_a", "dpm++", "pndm", "lms"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("-o", "--output", type=Path, default=Path("txt2img.png"))
    ap.add_argument("--negative", dest="negative_prompt", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", dest="guidance_scale", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--scheduler", choices=SCHEDULERS, default=None)
    ap.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--url", default=None, help="host:port (default: localhost:8001 for gRPC, "
                    "localhost:8000 for HTTP)")
    ap.add_argument("--model", default="stable_diffusion")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds")
    args = ap.parse_args(argv)

    if args.protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod
    from tritonclient.utils import InferenceServerException

    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    options = {k: getattr(args, k) for k in ("negative_prompt", "steps", "guidance_scale",
                                             "seed", "height", "width", "scheduler")}
    if args.protocol == "grpc":
        client = mod.InferenceServerClient(url)
        call = dict(client_timeout=args.timeout)
    else:
        client = mod.InferenceServerClient(url, network_timeout=args.timeout,
                                           connection_timeout=args.timeout)
        call = {}
    start = time.perf_counter()
    try:
        result = client.infer(args.model, infer_inputs(mod, args.prompt, **options), **call)
    except InferenceServerException as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 2
    image = result.as_numpy("image")[0]
    elapsed = time.perf_counter() - start

    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(args.output)
    print(f"wrote {args.output} ({image.shape[1]}x{image.shape[0]}) in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
