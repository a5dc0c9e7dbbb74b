"""The spec fragment that points `llm_engine` at a TensorRT-LLM engine (pure + small file I/O).

The fragment is the `llm_engine` model entry's runtime-specific part: `runtime: tensorrt_llm`,
the engine folder as artifact (sha256 of its config.json, cheap to verify at every load, unlike
the multi-GB rank files), one CPU instance (the Python stub holds no GPU; the executor drives
them), the executor settings as `parameters`, and `limits` from the engine's build limits.
`apply_fragment` merges it into a full deployment spec (e.g. specs/llm.yaml) so
`uip repo build --specs DIR` renders a repository serving that engine.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from uip.core.settings import sha256_file
from uip.spec.schema import DeploymentSpec, SpecError
from uip.trtllm.engine_dir import EngineDir
from uip.trtllm.runtime import ExecutorSettings

FRAGMENT_FILE = "uip-llm-engine.yaml"
ENGINE_MODEL = "llm_engine"
RUNTIME_KEYS = ("runtime", "artifact", "instances", "parameters", "limits")


def llm_engine_fragment(info: EngineDir, settings: ExecutorSettings | None = None,
                        eos_token_ids: tuple[int, ...] = (), artifact_path: str | None = None,
                        with_sha256: bool = True, model: str = ENGINE_MODEL) -> dict:
    """The fragment for an engine; `artifact_path` defaults to the engine folder (absolute).
    `eos_token_ids` (the checkpoint's) end requests that carry no end_id, as with torch."""
    settings = settings or ExecutorSettings()
    parameters: dict = settings.to_parameters()
    if eos_token_ids:
        parameters["eos_token_ids"] = ",".join(map(str, eos_token_ids))
    artifact: dict = {"path": artifact_path or str(info.path.resolve())}
    config = info.path / "config.json"
    if with_sha256 and config.is_file():
        artifact["sha256"] = {"config.json": sha256_file(config)}
    limits: dict[str, int] = {}
    if info.max_seq_len:
        limits["max_context"] = int(info.max_seq_len)
        limits["max_tokens"] = int(info.max_seq_len) - 1
    return {
        "name": model,
        "runtime": "tensorrt_llm",
        "artifact": artifact,
        "instances": [{"kind": "cpu", "count": 1}],
        "parameters": parameters,
        "limits": limits,
    }


def fragment_yaml(fragment: dict, info: EngineDir) -> str:
    head = (
        f"# llm_engine on a TensorRT-LLM engine: tp {info.tp_size} x pp {info.pp_size} = "
        f"{info.world_size} GPU rank(s).\n"
        "# Written by build_scripts/build_trtllm_engine.py. Merge into the llm_engine entry of\n"
        "# an LLM spec (or use --base-spec/--spec-out), render with `uip repo build`, and serve\n"
        f"# with `uip serve --world-size {info.world_size}` in "
        "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3.\n"
    )
    return head + yaml.safe_dump(fragment, sort_keys=False)


def write_fragment(folder: Path, fragment: dict, info: EngineDir) -> Path:
    path = folder / FRAGMENT_FILE
    path.write_text(fragment_yaml(fragment, info))
    return path


def apply_fragment(spec: dict, fragment: dict) -> dict:
    """A copy of a deployment spec (as loaded from YAML) whose engine model takes the
    fragment's runtime, artifact, instances, parameters and limits; validated."""
    out = copy.deepcopy(spec)
    name = fragment.get("name", ENGINE_MODEL)
    models = [m for m in out.get("models", []) if isinstance(m, dict) and m.get("name") == name]
    if not models:
        raise SpecError(f"the spec {out.get('name', '?')!r} has no model named {name!r} to "
                        "point at the engine")
    for key in RUNTIME_KEYS:
        if key in fragment:
            models[0][key] = copy.deepcopy(fragment[key])
    try:
        DeploymentSpec.model_validate(out)
    except ValueError as e:
        raise SpecError(f"the spec with the engine fragment applied is invalid: {e}") from None
    return out


def write_spec(base_spec: Path, fragment: dict, out: Path) -> Path:
    data = yaml.safe_load(base_spec.read_text())
    merged = apply_fragment(data, fragment)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# {base_spec.name} with llm_engine on a TensorRT-LLM engine "
        "(build_scripts/build_trtllm_engine.py).\n" + yaml.safe_dump(merged, sort_keys=False))
    return out
