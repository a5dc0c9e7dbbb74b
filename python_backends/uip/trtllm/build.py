"""Hugging Face checkpoint -> TensorRT-LLM engine: validation and the exact command lines (pure).

The flow of TensorRT-LLM 1.2.x (the last line with TensorRT engines):
1. checkpoint conversion, which also shards the weights for tp x pp:
   - full precision: the model family's `examples/models/core/<family>/convert_checkpoint.py`;
   - quantized (int8/int4 weight-only, int4 AWQ, fp8, SmoothQuant) and/or a quantized KV cache
     (int8, fp8): `examples/quantization/quantize.py` (NVIDIA ModelOpt);
2. `trtllm-build` on that checkpoint: it reads tp/pp from the checkpoint's mapping and builds one
   `rank<i>.engine` per rank with paged KV cache, the GEMM and attention plugins, the batch /
   token / sequence limits.
Nothing here runs anything: `plan()` returns the steps, the CLI
(build_scripts/build_trtllm_engine.py) runs them.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from uip.trtllm.checkpoint import FAMILIES, HfCheckpoint

TRTLLM_CONTAINER = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
DEFAULT_EXAMPLES = Path(os.environ.get("TRTLLM_EXAMPLES_DIR", "/opt/TensorRT-LLM/examples"))

QUANTIZATIONS = ("none", "int8_wo", "int4_wo", "int4_awq", "fp8", "int8_sq")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
DTYPES = ("auto", "float16", "bfloat16", "float32")
CALIBRATED = {"int4_awq", "fp8", "int8_sq"}  # formats that need calibration data
FP8_MIN_COMPUTE = 8.9  # Ada / Hopper and newer


@dataclass(frozen=True)
class BuildRequest:
    checkpoint: Path  # Hugging Face folder
    output_dir: Path  # engine folder
    tp_size: int = 1
    pp_size: int = 1
    dtype: str = "auto"
    quantization: str = "none"
    kv_cache_dtype: str = "auto"
    max_batch_size: int = 64
    max_input_len: int = 2048
    max_seq_len: int = 4096
    max_num_tokens: int = 8192
    gemm_plugin: str = "auto"
    calib_dataset: str | None = None
    calib_size: int = 512
    checkpoint_dir: Path | None = None  # intermediate TensorRT-LLM checkpoint
    examples_dir: Path = DEFAULT_EXAMPLES
    python: str = "python3"
    trtllm_build: str = "trtllm-build"
    workers: int | None = None
    force: bool = False
    allow_fewer_gpus: bool = False

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def trtllm_checkpoint(self) -> Path:
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        return self.output_dir.with_name(self.output_dir.name + "-checkpoint")

    @property
    def uses_quantize_script(self) -> bool:
        return self.quantization != "none" or self.kv_cache_dtype != "auto"

    @property
    def uses_fp8(self) -> bool:
        return self.quantization == "fp8" or self.kv_cache_dtype == "fp8"

    def converter(self, family: str | None) -> Path:
        if self.uses_quantize_script:
            return self.examples_dir / "quantization" / "quantize.py"
        return self.examples_dir / "models" / "core" / (family or "?") / "convert_checkpoint.py"


Severity = Literal["input", "environment", "warning"]


@dataclass(frozen=True)
class Problem:
    """`input`: the request is wrong (always fatal); `environment`: this machine cannot run the
    build (fatal unless dry-run); `warning`: worth knowing, not fatal."""

    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class BuildEnvironment:
    """What the build machine offers; `probe()` fills it, tests construct it."""

    gpus: int = 0
    compute_capabilities: tuple[float, ...] = ()
    missing: tuple[str, ...] = field(default_factory=tuple)  # scripts / commands not found

    @classmethod
    def probe(cls, req: BuildRequest, family: str | None) -> BuildEnvironment:
        from uip.trtllm.gpus import compute_capabilities, visible_gpus

        missing = []
        if not req.converter(family).is_file():
            missing.append(str(req.converter(family)))
        if shutil.which(req.trtllm_build) is None:
            missing.append(req.trtllm_build)
        return cls(visible_gpus(), tuple(compute_capabilities()), tuple(missing))


def validate(req: BuildRequest, ckpt: HfCheckpoint, env: BuildEnvironment) -> list[Problem]:
    """Every problem with a build request, before anything long runs."""
    p: list[Problem] = []

    def add(sev: Severity, msg: str) -> None:
        p.append(Problem(sev, msg))

    for name in ("tp_size", "pp_size", "max_batch_size", "max_input_len", "max_seq_len",
                 "max_num_tokens", "calib_size"):
        if getattr(req, name) < 1:
            add("input", f"--{name.replace('_', '-')} must be >= 1, got {getattr(req, name)}")
    if req.quantization not in QUANTIZATIONS:
        add("input", f"--quantization {req.quantization!r} is not one of {list(QUANTIZATIONS)}")
    if req.kv_cache_dtype not in KV_CACHE_DTYPES:
        add("input", f"--kv-cache-dtype {req.kv_cache_dtype!r} is not one of "
                     f"{list(KV_CACHE_DTYPES)}")
    if req.dtype not in DTYPES:
        add("input", f"--dtype {req.dtype!r} is not one of {list(DTYPES)}")

    heads, kv, layers = ckpt.num_attention_heads, ckpt.num_key_value_heads, ckpt.num_hidden_layers
    if req.tp_size >= 1 and heads % req.tp_size:
        ok = [t for t in range(1, heads + 1) if heads % t == 0 and t <= 16]
        add("input", f"--tp-size {req.tp_size} does not divide the {heads} attention heads of "
                     f"{ckpt.architecture}: each rank must hold whole heads; use one of {ok}")
    elif req.tp_size >= 1 and kv % req.tp_size and req.tp_size % kv:
        add("input", f"--tp-size {req.tp_size} and the {kv} key/value heads do not divide one "
                     "another: TensorRT-LLM shards KV heads (or replicates them when tp is a "
                     "multiple of their count)")
    if req.pp_size > layers:
        add("input", f"--pp-size {req.pp_size} is more than the {layers} layers: each pipeline "
                     "stage needs at least one layer")
    elif req.pp_size >= 1 and layers % req.pp_size:
        add("warning", f"{layers} layers do not split evenly over --pp-size {req.pp_size}: the "
                       "first stages get one more layer each")
    if req.max_input_len >= req.max_seq_len:
        add("input", f"--max-input-len {req.max_input_len} must be below --max-seq-len "
                     f"{req.max_seq_len} (prompt plus generated tokens), or no token is left "
                     "to generate")
    if req.max_num_tokens < req.max_input_len:
        add("warning", f"--max-num-tokens {req.max_num_tokens} < --max-input-len "
                       f"{req.max_input_len}: prompts longer than max_num_tokens need chunked "
                       "context at run time (parameter enable_chunked_context)")
    if ckpt.max_position_embeddings and req.max_seq_len > ckpt.max_position_embeddings:
        add("warning", f"--max-seq-len {req.max_seq_len} exceeds the model's "
                       f"{ckpt.max_position_embeddings} positions; quality past them depends on "
                       "its RoPE scaling")
    if not req.uses_quantize_script and ckpt.family is None:
        add("input", f"architecture {ckpt.architecture} has no convert_checkpoint.py mapping "
                     f"here (known: {sorted(FAMILIES)}); quantized builds go through "
                     "quantize.py, which covers more architectures")
    if req.quantization in CALIBRATED and not req.calib_dataset:
        add("warning", f"--quantization {req.quantization} calibrates on data: without "
                       "--calib-dataset DIR quantize.py downloads cnn_dailymail from the "
                       "Hugging Face Hub, which fails offline")
    if not ckpt.has_tokenizer:
        add("warning", f"{ckpt.path} has no tokenizer files; llm_preprocess/llm_postprocess "
                       "need one")
    if req.output_dir.exists() and any(req.output_dir.iterdir()) and not req.force:
        add("input", f"output folder {req.output_dir} exists and is not empty; pass --force to "
                     "overwrite it or choose another --output")

    # This machine.
    if env.gpus == 0:
        add("environment", "no GPU is visible (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES "
                           "hides them): TensorRT engines are built on the GPU type that "
                           "will run them")
    elif env.gpus < req.world_size:
        msg = (f"tp {req.tp_size} x pp {req.pp_size} = {req.world_size} ranks, but only "
               f"{env.gpus} GPU(s) are visible: the engine needs {req.world_size} GPUs to run")
        if req.allow_fewer_gpus:
            add("warning", msg + " (building anyway: --allow-fewer-gpus)")
        else:
            add("environment", msg + "; pass --allow-fewer-gpus to build it here for a "
                                     "bigger machine of the same GPU type")
    if req.uses_fp8 and env.compute_capabilities:
        low = min(env.compute_capabilities)
        if low < FP8_MIN_COMPUTE:
            add("environment", f"fp8 needs compute capability >= {FP8_MIN_COMPUTE} "
                               f"(Ada/Hopper); this GPU has {low}")
    for what in env.missing:
        add("environment", f"{what} not found: run the build in {TRTLLM_CONTAINER} "
                           "(docker/Dockerfile.gpu installs this project there and puts "
                           "TensorRT-LLM's examples at $TRTLLM_EXAMPLES_DIR)")
    return p


def fatal(problems: list[Problem], dry_run: bool = False) -> list[Problem]:
    stop = {"input"} if dry_run else {"input", "environment"}
    return [x for x in problems if x.severity in stop]


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]

    def shell(self) -> str:
        return shlex.join(self.argv)


def convert_step(req: BuildRequest, ckpt: HfCheckpoint) -> Step:
    common = [
        "--model_dir", str(req.checkpoint),
        "--output_dir", str(req.trtllm_checkpoint),
        "--dtype", req.dtype,
        "--tp_size", str(req.tp_size),
        "--pp_size", str(req.pp_size),
    ]
    script = str(req.converter(ckpt.family))
    if not req.uses_quantize_script:
        return Step("convert", [req.python, script, *common])
    qformat = "full_prec" if req.quantization == "none" else req.quantization
    argv = [req.python, script, *common, "--qformat", qformat]
    if req.kv_cache_dtype != "auto":
        argv += ["--kv_cache_dtype", req.kv_cache_dtype]
    if req.quantization in CALIBRATED or req.kv_cache_dtype != "auto":
        if req.calib_dataset:
            argv += ["--calib_dataset", req.calib_dataset]
        argv += ["--calib_size", str(req.calib_size)]
    return Step("quantize", argv)


def build_step(req: BuildRequest, gpus: int) -> Step:
    workers = req.workers or max(1, min(req.world_size, gpus))
    return Step("trtllm-build", [
        req.trtllm_build,
        "--checkpoint_dir", str(req.trtllm_checkpoint),
        "--output_dir", str(req.output_dir),
        "--max_batch_size", str(req.max_batch_size),
        "--max_input_len", str(req.max_input_len),
        "--max_seq_len", str(req.max_seq_len),
        "--max_num_tokens", str(req.max_num_tokens),
        "--kv_cache_type", "paged",
        "--gemm_plugin", req.gemm_plugin,
        "--gpt_attention_plugin", "auto",
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", "enable",
        "--workers", str(workers),
    ])


def plan(req: BuildRequest, ckpt: HfCheckpoint, gpus: int) -> list[Step]:
    """The commands, in order: checkpoint conversion (sharded for tp x pp), then trtllm-build."""
    return [convert_step(req, ckpt), build_step(req, gpus)]
