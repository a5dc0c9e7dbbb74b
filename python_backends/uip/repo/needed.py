"""Which default artifacts a model repository refers to."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from uip.artifacts import BUILDERS
from uip.core.paths import is_artifact_url


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _artifacts(repository: Path, models: list[str] | None = None) -> set[str]:
    """Every `artifact` parameter of the repository's models (or of `models` only)."""
    values = set()
    paths = (sorted(repository.glob("*/config.pbtxt")) if models is None
             else [repository / m / "config.pbtxt" for m in models])
    for cfg_path in paths:
        params = read_config(cfg_path).parameters
        if "artifact" in params:
            values.add(params["artifact"].string_value)
    return values


def needed(repository: Path, models: list[str] | None = None) -> list[str]:
    """Default artifact names (relative `artifact` parameters with a builder) the models (or
    those of `models`) use."""
    return sorted(v for v in _artifacts(repository, models)
                  if not Path(v).is_absolute() and v in BUILDERS)


def needed_urls(repository: Path) -> list[str]:
    """Artifacts named by URL (s3://, http(s)://), pulled by `uip serve` before loading."""
    return sorted(v for v in _artifacts(repository) if is_artifact_url(v))
