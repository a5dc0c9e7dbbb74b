"""Build a TensorRT-LLM engine (tp x pp ranks) from a Hugging Face checkpoint for llm_engine.

    python build_scripts/build_trtllm_engine.py --checkpoint HF_DIR --output ENGINE_DIR \\
        [--tp-size 2] [--pp-size 1] [--quantization fp8] [--dry-run]

Runs in nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3 (docker/Dockerfile.gpu): the
model family's convert_checkpoint.py (or quantize.py for quantized weights / KV cache), then
trtllm-build with paged KV cache and the GEMM plugin. Writes the engine folder and, inside it,
uip-llm-engine.yaml: the spec fragment that points llm_engine at the engine (--base-spec and
--spec-out also write a whole spec). Inputs are checked first (checkpoint present, tp divides
the attention heads, pp the layers, enough GPUs visible); --dry-run prints the commands only.
The logic lives in python_backends/uip/trtllm/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from uip.trtllm import build as B
from uip.trtllm.checkpoint import CheckpointError, HfCheckpoint
from uip.trtllm.engine_dir import EngineDir, EngineDirError
from uip.trtllm.fragment import fragment_yaml, llm_engine_fragment, write_fragment, write_spec
from uip.trtllm.runtime import ExecutorSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--checkpoint", type=Path, required=True,
                    help="Hugging Face checkpoint folder (config.json + weights + tokenizer)")
    io.add_argument("--output", type=Path, required=True, help="engine folder to write")
    io.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="intermediate TensorRT-LLM checkpoint (default: OUTPUT-checkpoint)")
    io.add_argument("--examples-dir", type=Path, default=B.DEFAULT_EXAMPLES,
                    help="TensorRT-LLM's examples/ of the installed version ($TRTLLM_EXAMPLES_DIR)")
    io.add_argument("--force", action="store_true", help="overwrite a non-empty --output")

    par = p.add_argument_group("parallelism (world size = tp x pp = GPUs at serving time)")
    par.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks")
    par.add_argument("--pp-size", type=int, default=1, help="pipeline-parallel ranks")
    par.add_argument("--workers", type=int, default=None,
                     help="ranks trtllm-build builds at once (default: min(tp x pp, GPUs))")
    par.add_argument("--allow-fewer-gpus", action="store_true",
                     help="build even if fewer than tp x pp GPUs are visible")

    q = p.add_argument_group("precision")
    q.add_argument("--dtype", default="auto", choices=B.DTYPES)
    q.add_argument("--quantization", default="none", choices=B.QUANTIZATIONS,
                   help="weights: int8/int4 weight-only, int4 AWQ, fp8, SmoothQuant (int8_sq)")
    q.add_argument("--kv-cache-dtype", default="auto", choices=B.KV_CACHE_DTYPES)
    q.add_argument("--calib-dataset", default=None,
                   help="local calibration data for fp8/int8_sq/int4_awq (default: quantize.py "
                        "downloads cnn_dailymail)")
    q.add_argument("--calib-size", type=int, default=512)

    lim = p.add_argument_group("engine limits")
    lim.add_argument("--max-batch-size", type=int, default=64)
    lim.add_argument("--max-input-len", type=int, default=2048)
    lim.add_argument("--max-seq-len", type=int, default=4096, help="prompt + output tokens")
    lim.add_argument("--max-num-tokens", type=int, default=8192,
                     help="tokens per in-flight batch step")
    lim.add_argument("--gemm-plugin", default="auto",
                     help="trtllm-build --gemm_plugin (auto, float16, bfloat16, fp8, disable)")

    ex = p.add_argument_group("executor settings written to the spec fragment")
    ex.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9)
    ex.add_argument("--batch-scheduler-policy", default="guaranteed_no_evict",
                    choices=["guaranteed_no_evict", "max_utilization"])
    ex.add_argument("--enable-kv-cache-reuse", action="store_true")
    ex.add_argument("--enable-chunked-context", action="store_true")
    ex.add_argument("--base-spec", type=Path, default=None,
                    help="an LLM spec (e.g. specs/llm.yaml) to copy with llm_engine switched")
    ex.add_argument("--spec-out", type=Path, default=None, help="where to write that spec")

    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs and print the commands without running them")
    return p


def request_from(args: argparse.Namespace) -> B.BuildRequest:
    return B.BuildRequest(
        checkpoint=args.checkpoint, output_dir=args.output, tp_size=args.tp_size,
        pp_size=args.pp_size, dtype=args.dtype, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, max_batch_size=args.max_batch_size,
        max_input_len=args.max_input_len, max_seq_len=args.max_seq_len,
        max_num_tokens=args.max_num_tokens, gemm_plugin=args.gemm_plugin,
        calib_dataset=args.calib_dataset, calib_size=args.calib_size,
        checkpoint_dir=args.checkpoint_dir, examples_dir=args.examples_dir,
        python=sys.executable, workers=args.workers, force=args.force,
        allow_fewer_gpus=args.allow_fewer_gpus)


def fail(msg: str, code: int = 2) -> int:
    print(f"build_trtllm_engine: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (args.base_spec is None) != (args.spec_out is None):
        return fail("--base-spec and --spec-out go together")
    req = request_from(args)
    try:
        settings = ExecutorSettings(
            kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
            batch_scheduler_policy=args.batch_scheduler_policy,
            enable_kv_cache_reuse=args.enable_kv_cache_reuse,
            enable_chunked_context=args.enable_chunked_context)
        ckpt = HfCheckpoint.read(req.checkpoint)
    except (ValueError, CheckpointError) as e:
        return fail(str(e))
    env = B.BuildEnvironment.probe(req, ckpt.family)
    problems = B.validate(req, ckpt, env)
    for p in problems:
        print(f"{'note' if args.dry_run and p.severity == 'environment' else p.severity}: "
              f"{p.message}", file=sys.stderr)
    if B.fatal(problems, dry_run=args.dry_run):
        return fail("nothing was run; fix the problems above")
    steps = B.plan(req, ckpt, env.gpus)
    if args.dry_run:
        for s in steps:
            print(f"# {s.name}\n{s.shell()}")
        preview = EngineDir(req.output_dir, req.tp_size, req.pp_size,
                             max_input_len=req.max_input_len, max_seq_len=req.max_seq_len)
        print(f"# spec fragment -> {req.output_dir / 'uip-llm-engine.yaml'}")
        frag = llm_engine_fragment(preview, settings, ckpt.eos_token_ids, with_sha256=False)
        print(fragment_yaml(frag, preview))
        return 0

    if req.output_dir.exists() and req.force:
        shutil.rmtree(req.output_dir)
    for s in steps:
        print(f"==> {s.name}: {s.shell()}", flush=True)
        rc = subprocess.run(s.argv).returncode
        if rc != 0:
            return fail(f"step {s.name} failed (exit {rc}); the command was:\n  {s.shell()}", rc)
    try:
        info = EngineDir.read(req.output_dir)
    except EngineDirError as e:
        return fail(str(e))
    fragment = llm_engine_fragment(info, settings, ckpt.eos_token_ids)
    path = write_fragment(req.output_dir, fragment, info)
    print(f"engine: {info.path} (tp {info.tp_size} x pp {info.pp_size}); spec fragment: {path}")
    if args.base_spec is not None:
        out = write_spec(args.base_spec, fragment, args.spec_out)
        print(f"spec: {out}")
    print(f"serve it: uip serve --model-repository REPO --world-size {info.world_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
