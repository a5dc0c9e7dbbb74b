"""Which default artifacts a model repository refers to."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from uip.artifacts import BUILDERS


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def needed(repository: Path) -> list[str]:
    """Default artifact names (relative `artifact` parameters with a builder) the models use."""
    names: set[str] = set()
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        params = read_config(cfg_path).parameters
        if "artifact" in params:
            value = params["artifact"].string_value
            if not Path(value).is_absolute() and value in BUILDERS:
                names.add(value)
    return sorted(names)
