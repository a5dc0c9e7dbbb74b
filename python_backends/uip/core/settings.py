"""A model's settings as rendered from its spec into config.pbtxt parameters (pure)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uip.core.paths import resolve_artifact

TRUE_WORDS = ("1", "true", "yes", "on")  # how a spec parameter says true ...
FALSE_WORDS = ("0", "false", "no", "off")  # ... and false


class ArtifactError(RuntimeError):
    """An artifact that is missing or does not match its checksum."""


@dataclass
class ModelSettings:
    name: str
    runtime: str = "python"
    artifact: Path | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 0
    decoupled: bool = False
    device: str = "cpu"

    @classmethod
    def from_config(
        cls, config: dict[str, Any], args: dict[str, str] | None = None
    ) -> ModelSettings:
        """From the model_config JSON Triton hands to `initialize` (and its other args)."""
        args = args or {}
        raw = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        s = cls(name=config.get("name", args.get("model_name", "?")))
        s.runtime = raw.pop("runtime", "python")
        if "artifact" in raw:
            s.artifact = resolve_artifact(raw.pop("artifact"))
        for k in list(raw):
            if k.startswith("artifact.sha256."):
                s.sha256[k.removeprefix("artifact.sha256.")] = raw.pop(k)
            elif k.startswith("limits."):
                s.limits[k.removeprefix("limits.")] = raw.pop(k)
        s.parameters = raw
        s.max_batch_size = int(config.get("max_batch_size", 0))
        s.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        if args.get("model_instance_kind") == "GPU":
            s.device = f"cuda:{args.get('model_instance_device_id', '0')}"
        return s

    @classmethod
    def from_args(cls, args: dict[str, str]) -> ModelSettings:
        return cls.from_config(json.loads(args["model_config"]), args)

    def limit(self, key: str, default: float | int, kind: type = int):
        return kind(self.limits.get(key, default))

    def param(self, key: str, default: Any = None, kind: type = str):
        if key not in self.parameters:
            return default
        v = self.parameters[key]
        if kind is bool:
            return v.strip().lower() in TRUE_WORDS
        return kind(v)

    def positive(self, key: str, default: float) -> float:
        """A parameter that must be a number > 0 (e.g. a polling period)."""
        value = self.param(key, default, float)
        if not value > 0:
            raise ValueError(f"model '{self.name}': parameter {key} must be > 0, got {value}")
        return value

    def artifact_dir(self) -> Path:
        """The verified artifact folder: present, and every listed file matching its sha256."""
        if self.artifact is None:
            raise ArtifactError(f"model '{self.name}' has no artifact in its spec")
        verify_artifact(self.artifact, self.sha256)
        return self.artifact


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_artifact(folder: Path, sha256: dict[str, str]) -> None:
    if not folder.is_dir():
        raise ArtifactError(
            f"artifact folder {folder} is missing: build it with `uip artifacts build` "
            "(or `uip serve`, which builds missing default artifacts), or set UIP_ARTIFACTS."
        )
    for rel, want in sha256.items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} is missing")
        got = sha256_file(path)
        if got != want:
            raise ArtifactError(f"{path} has sha256 {got}, but the spec expects {want}")
