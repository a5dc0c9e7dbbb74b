"""Render specs into a Triton model repository through Triton's own protobuf schema."""

from __future__ import annotations

import difflib
import filecmp
import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from uip.spec.schema import DeploymentSpec, ModelSpec, TensorSpec

_KIND = {
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
    "model": mc.ModelInstanceGroup.KIND_MODEL,
}
SHIM = (
    "# Generated from specs/{spec}.yaml by `uip repo build`; logic in python_backends/uip.\n"
    "from {module} import {cls} as TritonPythonModel  # noqa: F401\n"
)


def _dtype(name: str) -> int:
    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def _tensor(msg, t: TensorSpec) -> None:
    msg.name = t.name
    msg.data_type = _dtype(t.dtype)
    msg.dims.extend(t.dims)
    if t.optional:
        msg.optional = True


# A model holding the LLM engine itself (llm_bls with engine_transport: local; no llm_engine)
# takes llm_engine's LoRA control request (`uip lora --model llm_bls`) too: rendered only then,
# so the default (grpc) llm_bls keeps the `llm` contract's tensors alone.
ENGINE_CONTROL_INPUT = TensorSpec(name="lora_control", dtype="BYTES", dims=[1], optional=True)
ENGINE_CONTROL_OUTPUT = TensorSpec(name="lora_status", dtype="BYTES", dims=[1])


def _tensors(m: ModelSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The spec's inputs and outputs, plus the engine's control tensors where `m` holds the
    engine (unless its spec declares them already)."""
    inputs, outputs = list(m.inputs), list(m.outputs)
    if m.parameters.get("engine_transport") == "local":
        if ENGINE_CONTROL_INPUT.name not in {t.name for t in inputs}:
            inputs.append(ENGINE_CONTROL_INPUT)
        if ENGINE_CONTROL_OUTPUT.name not in {t.name for t in outputs}:
            outputs.append(ENGINE_CONTROL_OUTPUT)
    return inputs, outputs


def _scalar(v: str | int | float | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def model_config(m: ModelSpec) -> mc.ModelConfig:
    """The ModelConfig protobuf of one model; a wrong field name fails here, not in Triton."""
    cfg = mc.ModelConfig(name=m.name, max_batch_size=m.max_batch_size)
    if m.is_ensemble:
        cfg.platform = "ensemble"
    else:
        cfg.backend = "python"
    inputs, outputs = _tensors(m)
    for t in inputs:
        _tensor(cfg.input.add(), t)
    for t in outputs:
        _tensor(cfg.output.add(), t)
    if m.decoupled:
        cfg.model_transaction_policy.decoupled = True
    if not m.is_ensemble:
        for g in m.instances:
            ig = cfg.instance_group.add(kind=_KIND[g.kind], count=g.count)
            if g.gpus is not None:
                ig.gpus.extend(g.gpus)
    if m.batching is not None:
        b = m.batching
        if b.dynamic is not None:
            cfg.dynamic_batching.preferred_batch_size.extend(b.dynamic.preferred_batch_sizes)
            cfg.dynamic_batching.max_queue_delay_microseconds = b.dynamic.max_queue_delay_us
            if b.max_queue_size or b.default_timeout_us:
                pol = cfg.dynamic_batching.default_queue_policy
                pol.max_queue_size = b.max_queue_size
                pol.default_timeout_microseconds = b.default_timeout_us
                if b.default_timeout_us:
                    pol.timeout_action = mc.ModelQueuePolicy.REJECT
                    pol.allow_timeout_override = True
    for step in m.steps or []:
        s = cfg.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        s.input_map.update(step.inputs)
        s.output_map.update(step.outputs)
    params = {"runtime": m.runtime} if not m.is_ensemble else {}
    if m.artifact is not None:
        params["artifact"] = m.artifact.path
        params.update({f"artifact.sha256.{f}": h for f, h in m.artifact.sha256.items()})
    params.update({f"limits.{k}": _scalar(v) for k, v in m.limits.items()})
    params.update({k: _scalar(v) for k, v in m.parameters.items()})
    for k in sorted(params):
        cfg.parameters[k].string_value = params[k]
    return cfg


def render_model(spec: DeploymentSpec, m: ModelSpec, out: Path) -> None:
    folder = out / m.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(model_config(m)))
    if m.handler is not None:
        module, cls = m.handler.split(":")
        (folder / "1" / "model.py").write_text(SHIM.format(spec=spec.name, module=module, cls=cls))
    else:
        # Triton wants a version folder for ensembles too; git keeps it through this file.
        (folder / "1" / ".gitkeep").write_text("")


def build_repository(specs: list[DeploymentSpec], out: Path) -> list[str]:
    """Write every model of every spec under `out`, replacing folders of models it renders."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for spec in specs:
        for m in spec.models:
            shutil.rmtree(out / m.name, ignore_errors=True)
            render_model(spec, m, out)
            names.append(m.name)
    return names


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def diff_repository(specs: list[DeploymentSpec], repo: Path) -> str:
    """Unified diff between `repo` and what the specs render; empty when they agree."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        build_repository(specs, fresh)
        have = _files(repo) if repo.exists() else set()
        want = _files(fresh)
        chunks = []
        for rel in sorted(have | want):
            a, b = repo / rel, fresh / rel
            if rel in have and rel in want and filecmp.cmp(a, b, shallow=False):
                continue
            old = a.read_text().splitlines(keepends=True) if rel in have else []
            new = b.read_text().splitlines(keepends=True) if rel in want else []
            chunks.extend(difflib.unified_diff(
                old, new, f"{repo.name}/{rel} (checked in)", f"{repo.name}/{rel} (from specs)"))
        return "".join(chunks)
