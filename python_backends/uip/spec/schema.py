"""The standardized deployment spec (one YAML file per deployment) as pydantic models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uip.core.paths import ARTIFACT_URL_SCHEMES, is_artifact_url

DType = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]
Runtime = Literal["python", "torch", "tensorrt_llm"]
NAME_RE = r"^[A-Za-z][A-Za-z0-9_\-]*$"


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str = Field(pattern=NAME_RE)
    dtype: DType
    dims: list[int] = Field(min_length=1, description="dims without the batch dimension; -1 = any")
    optional: bool = False

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError("each dim must be a positive size or -1 (variable)")
        return dims


class ArtifactSpec(_Strict):
    path: str = Field(description="folder, absolute or relative to the artifacts root, or the "
                      "URL (s3://bucket/prefix, http(s)://...) of a pushed folder that `uip "
                      "serve` pulls into the artifacts cache")
    sha256: dict[str, str] = Field(default_factory=dict, description="file in folder -> sha256")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        scheme = urlparse(v).scheme
        if "://" in v and scheme not in ARTIFACT_URL_SCHEMES:
            raise ValueError(f"artifact URL scheme {scheme!r} is not one of "
                             f"{', '.join(ARTIFACT_URL_SCHEMES)}")
        if is_artifact_url(v) and not urlparse(v).netloc:
            raise ValueError(f"artifact URL {v!r} has no bucket or host")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: dict[str, str]) -> dict[str, str]:
        for f, h in v.items():
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise ValueError(f"sha256 of {f!r} must be 64 lowercase hex digits")
        return v


class InstanceGroupSpec(_Strict):
    kind: Literal["cpu", "gpu", "model"] = "cpu"
    count: int = Field(default=1, ge=1)
    gpus: list[int] | None = None

    @model_validator(mode="after")
    def _gpus_only_on_gpu(self) -> InstanceGroupSpec:
        if self.gpus is not None and self.kind != "gpu":
            raise ValueError("gpus may only be set when kind is 'gpu'")
        return self


class DynamicBatchingSpec(_Strict):
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_us: int = Field(default=0, ge=0)


class BatchingSpec(_Strict):
    dynamic: DynamicBatchingSpec | None = None
    max_queue_size: int = Field(default=0, ge=0, description="0 = unbounded")
    default_timeout_us: int = Field(default=0, ge=0, description="0 = no queue timeout")


class EnsembleStepSpec(_Strict):
    model: str = Field(pattern=NAME_RE)
    inputs: dict[str, str] = Field(description="step's input -> ensemble tensor")
    outputs: dict[str, str] = Field(description="step's output -> ensemble tensor")


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_RE)
    handler: str | None = Field(
        default=None, description="python models: 'module:Class' implementing TritonPythonModel"
    )
    runtime: Runtime = "python"
    artifact: ArtifactSpec | None = None  # a plain string is its path (or URL)
    max_batch_size: int = Field(default=1, ge=0)
    decoupled: bool = False
    instances: list[InstanceGroupSpec] = Field(default_factory=lambda: [InstanceGroupSpec()])
    batching: BatchingSpec | None = None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[EnsembleStepSpec] | None = None
    limits: dict[str, int | float] = Field(default_factory=dict)
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return self.steps is not None

    @field_validator("artifact", mode="before")
    @classmethod
    def _artifact_shorthand(cls, v: object) -> object:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError("handler must look like 'package.module:ClassName'")
        return v

    @model_validator(mode="after")
    def _kind(self) -> ModelSpec:
        if self.is_ensemble == (self.handler is not None):
            raise ValueError("a model has either 'handler' (python model) or 'steps' (ensemble)")
        if self.is_ensemble and (self.artifact or self.batching or self.runtime != "python"):
            raise ValueError("an ensemble takes no artifact, batching or runtime")
        names = [t.name for t in self.inputs + self.outputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tensor names must be unique within a model: {sorted(dup)}")
        return self


class DeploymentSpec(_Strict):
    name: str = Field(pattern=NAME_RE)
    assembly: Literal["mono", "ensemble", "orchestrator"]
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _assembly(self) -> DeploymentSpec:
        ensembles = [m for m in self.models if m.is_ensemble]
        if self.assembly == "mono" and (len(self.models) != 1 or ensembles):
            raise ValueError("a 'mono' deployment has exactly one python model")
        if self.assembly == "ensemble" and len(ensembles) != 1:
            raise ValueError("an 'ensemble' deployment has exactly one model with 'steps'")
        if self.assembly == "orchestrator" and ensembles:
            raise ValueError("an 'orchestrator' deployment has no 'steps'; its BLS model calls")
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model names must be unique: {sorted(dup)}")
        return self


def _loc(loc: tuple, data: dict) -> str:
    """Turn pydantic's location into 'models[llm_engine].max_batch_size'."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(
                node[part], dict) else None
            out[-1] += f"[{name}]" if name else f"[{part}]"
        else:
            out.append(str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(out) or "(top level)"


def load_spec(path: Path) -> DeploymentSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping with name, assembly and models")
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid spec"]
        for err in e.errors():
            lines.append(f"  {_loc(err['loc'], data)}: {err['msg']}")
        raise SpecError("\n".join(lines)) from None


# Files in specs/ that configure something other than a deployment (uip.gateway.spec).
NOT_DEPLOYMENTS = {"gateway.yaml"}


def load_specs(folder: Path) -> list[DeploymentSpec]:
    """All specs of a folder; model names must be unique and ensemble steps must resolve."""
    files = [f for f in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
             if f.name not in NOT_DEPLOYMENTS]
    if not files:
        raise SpecError(f"{folder}: no *.yaml specs found")
    specs = [load_spec(f) for f in files]
    owner: dict[str, Path] = {}
    models: dict[str, ModelSpec] = {}
    for f, s in zip(files, specs, strict=True):
        for m in s.models:
            if m.name in owner:
                raise SpecError(f"{f}: model {m.name!r} is also defined in {owner[m.name]}")
            owner[m.name] = f
            models[m.name] = m
    for f, s in zip(files, specs, strict=True):
        for m in s.models:
            for step in m.steps or []:
                _check_step(f, m, step, models)
    return specs


def _check_step(f: Path, ens: ModelSpec, step: EnsembleStepSpec, models: dict) -> None:
    target = models.get(step.model)
    where = f"{f}: models[{ens.name}].steps[{step.model}]"
    if target is None:
        raise SpecError(f"{where}: no spec defines model {step.model!r}")
    t_in = {t.name for t in target.inputs}
    t_out = {t.name for t in target.outputs}
    bad_in = set(step.inputs) - t_in
    bad_out = set(step.outputs) - t_out
    if bad_in:
        raise SpecError(f"{where}.inputs: {sorted(bad_in)} not inputs of it; "
                        f"allowed {sorted(t_in)}")
    if bad_out:
        raise SpecError(f"{where}.outputs: {sorted(bad_out)} not outputs of it; "
                        f"allowed {sorted(t_out)}")
