"""build_scripts/build_trtllm_engine.py: the command lines for several specs, the validation
errors, and a whole run against stand-in tools (TensorRT-LLM is not installable here)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uip.core.paths import PROJECT_ROOT
from uip.spec.schema import DeploymentSpec, SpecError
from uip.trtllm import build as B
from uip.trtllm.checkpoint import CheckpointError, HfCheckpoint
from uip.trtllm.engine_dir import EngineDir
from uip.trtllm.fragment import apply_fragment, llm_engine_fragment

SCRIPT = PROJECT_ROOT / "build_scripts" / "build_trtllm_engine.py"
GPUS8 = B.BuildEnvironment(gpus=8, compute_capabilities=(9.0,) * 8)


def hf_checkpoint(path: Path, arch="LlamaForCausalLM", heads=32, kv_heads=8, layers=32,
                  positions=8192, weights=True, tokenizer=True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": [arch], "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers, "vocab_size": 128256, "max_position_embeddings": positions,
        "torch_dtype": "bfloat16", "eos_token_id": [128001, 128009]}))
    if weights:
        (path / "model.safetensors").write_bytes(b"\0")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


@pytest.fixture
def ckpt(tmp_path) -> HfCheckpoint:
    return HfCheckpoint.read(hf_checkpoint(tmp_path / "hf"))


def req(tmp_path, **kw) -> B.BuildRequest:
    kw.setdefault("examples_dir", Path("/ex"))
    return B.BuildRequest(checkpoint=tmp_path / "hf", output_dir=tmp_path / "engine",
                          python="python3", **kw)


def argv_of(step: B.Step) -> dict[str, str]:
    """--flag value pairs of a command line."""
    a = step.argv
    return {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")
            and not a[i + 1].startswith("--")}


# --------------------------------------------------------------------------- command lines


def test_full_precision_tp2_uses_the_family_converter(tmp_path, ckpt):
    convert, build = B.plan(req(tmp_path, tp_size=2, dtype="bfloat16"), ckpt, gpus=8)
    assert convert.argv[:2] == ["python3", "/ex/models/core/llama/convert_checkpoint.py"]
    a = argv_of(convert)
    assert a["--model_dir"] == str(tmp_path / "hf")
    assert a["--output_dir"] == str(tmp_path / "engine-checkpoint")
    assert (a["--tp_size"], a["--pp_size"], a["--dtype"]) == ("2", "1", "bfloat16")
    assert "--qformat" not in convert.argv
    assert build.argv[0] == "trtllm-build"
    b = argv_of(build)
    assert b["--checkpoint_dir"] == str(tmp_path / "engine-checkpoint")
    assert b["--output_dir"] == str(tmp_path / "engine")
    assert b["--kv_cache_type"] == "paged" and b["--gemm_plugin"] == "auto"
    assert b["--gpt_attention_plugin"] == "auto" and b["--remove_input_padding"] == "enable"
    assert (b["--max_batch_size"], b["--max_input_len"], b["--max_seq_len"],
            b["--max_num_tokens"]) == ("64", "2048", "4096", "8192")
    assert b["--workers"] == "2"  # one build worker per rank, GPUs permitting
    assert "--tp_size" not in build.argv  # trtllm-build takes tp/pp from the checkpoint


def test_pipeline_parallel_and_limits(tmp_path, ckpt):
    convert, build = B.plan(req(tmp_path, tp_size=2, pp_size=4, max_batch_size=8,
                                max_input_len=1024, max_seq_len=2048, max_num_tokens=4096,
                                gemm_plugin="bfloat16"), ckpt, gpus=4)
    assert (argv_of(convert)["--tp_size"], argv_of(convert)["--pp_size"]) == ("2", "4")
    b = argv_of(build)
    assert (b["--max_batch_size"], b["--max_input_len"], b["--max_seq_len"],
            b["--max_num_tokens"], b["--gemm_plugin"]) == ("8", "1024", "2048", "4096",
                                                           "bfloat16")
    assert b["--workers"] == "4"  # min(world size 8, 4 GPUs)


@pytest.mark.parametrize("quant, kv, qformat, calibrated", [
    ("int8_wo", "auto", "int8_wo", False),
    ("int4_wo", "auto", "int4_wo", False),
    ("fp8", "fp8", "fp8", True),
    ("int8_sq", "int8", "int8_sq", True),
    ("int4_awq", "auto", "int4_awq", True),
    ("none", "int8", "full_prec", True),  # int8 KV cache alone: full precision weights
])
def test_quantized_builds_go_through_quantize_py(tmp_path, ckpt, quant, kv, qformat, calibrated):
    convert, _ = B.plan(req(tmp_path, tp_size=4, quantization=quant, kv_cache_dtype=kv,
                            calib_dataset="/data/calib"), ckpt, gpus=4)
    assert convert.name == "quantize"
    assert convert.argv[1] == "/ex/quantization/quantize.py"
    a = argv_of(convert)
    assert a["--qformat"] == qformat and a["--tp_size"] == "4"
    assert (a.get("--kv_cache_dtype") or "auto") == kv
    assert ("--calib_dataset" in a) == calibrated
    assert ("--calib_size" in a) == calibrated


def test_step_shell_text_round_trips(tmp_path, ckpt):
    for step in B.plan(req(tmp_path, tp_size=2), ckpt, gpus=2):
        assert shlex.split(step.shell()) == step.argv


# --------------------------------------------------------------------------- validation


def messages(problems, severity=None):
    return " | ".join(p.message for p in problems if severity in (None, p.severity))


def test_valid_request_has_no_fatal_problem(tmp_path, ckpt):
    assert B.fatal(B.validate(req(tmp_path, tp_size=8), ckpt, GPUS8)) == []


def test_tp_must_divide_the_attention_heads(tmp_path, ckpt):
    problems = B.validate(req(tmp_path, tp_size=3), ckpt, GPUS8)
    text = messages(B.fatal(problems))
    assert "--tp-size 3 does not divide the 32 attention heads" in text
    assert "[1, 2, 4, 8, 16]" in text


def test_kv_heads_must_shard_or_replicate(tmp_path):
    ck = HfCheckpoint.read(hf_checkpoint(tmp_path / "hf", heads=24, kv_heads=3))
    assert "key/value heads" in messages(B.validate(req(tmp_path, tp_size=2), ck, GPUS8))
    assert B.fatal(B.validate(req(tmp_path, tp_size=6), ck, GPUS8)) == []  # replicated 2x


def test_pp_needs_layers_and_other_input_errors(tmp_path):
    ck = HfCheckpoint.read(hf_checkpoint(tmp_path / "hf", layers=2, positions=1024))
    problems = B.validate(req(tmp_path, pp_size=4, max_input_len=4096, max_seq_len=4096,
                              max_batch_size=0), ck, GPUS8)
    text = messages(B.fatal(problems))
    assert "--pp-size 4 is more than the 2 layers" in text
    assert "--max-input-len 4096 must be below --max-seq-len 4096" in text
    assert "--max-batch-size must be >= 1" in text
    assert "exceeds the model's 1024 positions" in messages(problems, "warning")


def test_unknown_architecture_needs_quantize_py(tmp_path):
    ck = HfCheckpoint.read(hf_checkpoint(tmp_path / "hf", arch="MambaForCausalLM"))
    assert "no convert_checkpoint.py mapping" in messages(B.validate(req(tmp_path), ck, GPUS8))
    assert B.fatal(B.validate(req(tmp_path, quantization="int8_wo"), ck, GPUS8)) == []


def test_gpu_checks(tmp_path, ckpt):
    none = B.validate(req(tmp_path, tp_size=2), ckpt, B.BuildEnvironment(gpus=0))
    assert "no GPU is visible" in messages(none, "environment")
    assert B.fatal(none, dry_run=True) == []  # a dry run still prints the plan
    few = B.validate(req(tmp_path, tp_size=4, pp_size=2), ckpt, B.BuildEnvironment(gpus=2))
    assert "= 8 ranks, but only 2 GPU(s) are visible" in messages(B.fatal(few))
    ok = B.validate(req(tmp_path, tp_size=8, allow_fewer_gpus=True), ckpt,
                    B.BuildEnvironment(gpus=2))
    assert B.fatal(ok) == [] and "building anyway" in messages(ok, "warning")
    ampere = B.validate(req(tmp_path, quantization="fp8", calib_dataset="/d"), ckpt,
                        B.BuildEnvironment(gpus=1, compute_capabilities=(8.0,)))
    assert "fp8 needs compute capability >= 8.9" in messages(B.fatal(ampere))


def test_missing_tools_name_the_container(tmp_path, ckpt):
    env = B.BuildEnvironment(gpus=1, missing=("trtllm-build",))
    text = messages(B.fatal(B.validate(req(tmp_path), ckpt, env)))
    assert "trtllm-build not found" in text and B.TRTLLM_CONTAINER in text


def test_non_empty_output_needs_force(tmp_path, ckpt):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "old").write_text("x")
    assert "--force" in messages(B.fatal(B.validate(req(tmp_path), ckpt, GPUS8)))
    assert B.fatal(B.validate(req(tmp_path, force=True), ckpt, GPUS8)) == []


@pytest.mark.parametrize("kw, word", [
    ({}, "does not exist"),
    ({"make": True, "weights": False}, "no weights"),
    ({"make": True, "config": False}, "no config.json"),
])
def test_checkpoint_errors(tmp_path, kw, word):
    path = tmp_path / "hf"
    if kw.get("make"):
        hf_checkpoint(path, weights=kw.get("weights", True))
        if kw.get("config") is False:
            (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=word):
        HfCheckpoint.read(path)


# --------------------------------------------------------------------------- fragment


def test_fragment_points_llm_engine_at_the_engine_and_merges_into_the_llm_spec(tmp_path):
    from support.fake_trtllm import write_engine_dir

    info = EngineDir.read(write_engine_dir(tmp_path / "eng", tp_size=2, max_seq_len=512))
    frag = llm_engine_fragment(info, eos_token_ids=(2,))
    assert frag["runtime"] == "tensorrt_llm"
    assert frag["artifact"]["path"] == str((tmp_path / "eng").resolve())
    assert len(frag["artifact"]["sha256"]["config.json"]) == 64
    assert frag["limits"] == {"max_context": 512, "max_tokens": 511}
    assert frag["parameters"]["eos_token_ids"] == "2"
    spec = yaml.safe_load((PROJECT_ROOT / "specs" / "llm.yaml").read_text())
    merged = apply_fragment(spec, frag)
    engine = next(m for m in DeploymentSpec.model_validate(merged).models
                  if m.name == "llm_engine")
    assert engine.runtime == "tensorrt_llm" and "num_blocks" not in engine.parameters
    assert engine.inputs == next(m for m in DeploymentSpec.model_validate(spec).models
                                 if m.name == "llm_engine").inputs
    with pytest.raises(SpecError, match="no model named"):
        apply_fragment({"name": "x", "models": []}, frag)


# --------------------------------------------------------------------------- the script


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=PROJECT_ROOT)


def test_help_lists_tp_and_pp():
    r = run_script("--help")
    assert r.returncode == 0
    assert "--tp-size" in r.stdout and "--pp-size" in r.stdout


def test_script_refuses_bad_input_before_running_anything(tmp_path):
    hf_checkpoint(tmp_path / "hf")
    r = run_script("--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "e"),
                   "--tp-size", "3", "--dry-run")
    assert r.returncode == 2
    assert "does not divide the 32 attention heads" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = run_script("--checkpoint", str(tmp_path / "none"), "--output", str(tmp_path / "e"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _stand_in_tools(tmp_path: Path) -> tuple[dict, Path]:
    """nvidia-smi (2 H100s), trtllm-build and convert_checkpoint.py that write what the real
    ones write (a checkpoint config, then config.json + rank files)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "nvidia-smi": """#!/bin/sh
case "$1" in --list-gpus) printf 'GPU 0: NVIDIA H100 (UUID: a)\\nGPU 1: NVIDIA H100 (UUID: b)\\n';;
*) printf '9.0\\n9.0\\n';; esac
""",
        "trtllm-build": f"""#!{sys.executable}
import json, sys
a = dict(zip(sys.argv[1::2], sys.argv[2::2]))
ck = json.load(open(a["--checkpoint_dir"] + "/config.json"))
m = ck["mapping"]
import os; os.makedirs(a["--output_dir"], exist_ok=True)
json.dump({{"version": "1.2.0", "pretrained_config": {{**ck, "vocab_size": 128256}},
           "build_config": {{"max_batch_size": int(a["--max_batch_size"]),
                            "max_input_len": int(a["--max_input_len"]),
                            "max_seq_len": int(a["--max_seq_len"]),
                            "max_num_tokens": int(a["--max_num_tokens"])}}}},
          open(a["--output_dir"] + "/config.json", "w"))
for r in range(m["tp_size"] * m["pp_size"]):
    open(f'{{a["--output_dir"]}}/rank{{r}}.engine', "wb").write(b"engine")
""",
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    conv = tmp_path / "examples" / "models" / "core" / "llama" / "convert_checkpoint.py"
    conv.parent.mkdir(parents=True)
    conv.write_text("""import json, os, sys
a = dict(zip(sys.argv[1::2], sys.argv[2::2]))
os.makedirs(a["--output_dir"], exist_ok=True)
json.dump({"architecture": "LlamaForCausalLM", "mapping": {"tp_size": int(a["--tp_size"]),
          "pp_size": int(a["--pp_size"])}}, open(a["--output_dir"] + "/config.json", "w"))
""")
    conv.chmod(conv.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env, tmp_path / "examples"


def test_dry_run_prints_the_commands_and_the_fragment(tmp_path):
    env, examples = _stand_in_tools(tmp_path)
    hf_checkpoint(tmp_path / "hf")
    r = run_script("--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "e"),
                   "--tp-size", "2", "--examples-dir", str(examples), "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("convert_checkpoint.py" in ln and "--tp_size 2" in ln for ln in lines)
    assert any(ln.startswith("trtllm-build ") for ln in lines)
    assert "runtime: tensorrt_llm" in r.stdout
    assert not (tmp_path / "e").exists()


def test_whole_build_with_stand_in_tools_writes_engine_fragment_and_spec(tmp_path):
    env, examples = _stand_in_tools(tmp_path)
    hf_checkpoint(tmp_path / "hf")
    out_spec = tmp_path / "specs" / "llm.yaml"
    r = run_script("--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "e"),
                   "--tp-size", "2", "--max-seq-len", "1024", "--max-input-len", "512",
                   "--examples-dir", str(examples), "--batch-scheduler-policy", "max_utilization",
                   "--base-spec", str(PROJECT_ROOT / "specs" / "llm.yaml"),
                   "--spec-out", str(out_spec), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "e" / "rank1.engine").is_file()
    frag = yaml.safe_load((tmp_path / "e" / "uip-llm-engine.yaml").read_text())
    assert frag["parameters"]["batch_scheduler_policy"] == "max_utilization"
    assert frag["parameters"]["eos_token_ids"] == "128001,128009"
    assert frag["limits"]["max_context"] == 1024
    spec = yaml.safe_load(out_spec.read_text())
    engine = next(m for m in spec["models"] if m["name"] == "llm_engine")
    assert engine["runtime"] == "tensorrt_llm"
    assert engine["artifact"]["path"] == str((tmp_path / "e").resolve())
    assert "--world-size 2" in r.stdout
