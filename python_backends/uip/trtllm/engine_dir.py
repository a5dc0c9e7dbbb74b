"""What a built TensorRT-LLM engine folder is: its parallel layout and limits (pure).

`trtllm-build` writes `config.json` (`pretrained_config` with the `mapping`, and
`build_config`) and one `rank<i>.engine` per rank into the output folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class EngineDirError(ValueError):
    """A folder that is not a usable TensorRT-LLM engine; the message says why."""


@dataclass(frozen=True)
class EngineDir:
    path: Path
    tp_size: int
    pp_size: int
    architecture: str | None = None
    dtype: str | None = None
    vocab_size: int | None = None
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    version: str | None = None

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @classmethod
    def from_config(cls, path: Path, cfg: dict) -> EngineDir:
        pretrained = cfg.get("pretrained_config")
        build = cfg.get("build_config") or {}
        if not isinstance(pretrained, dict):
            raise EngineDirError(
                f"{path}/config.json has no pretrained_config: it is not a config written by "
                "trtllm-build (TensorRT-LLM >= 0.9); rebuild with "
                "build_scripts/build_trtllm_engine.py."
            )
        mapping = pretrained.get("mapping") or {}
        tp = int(mapping.get("tp_size", 1))
        pp = int(mapping.get("pp_size", 1))
        return cls(
            path=path,
            tp_size=tp,
            pp_size=pp,
            architecture=pretrained.get("architecture"),
            dtype=pretrained.get("dtype"),
            vocab_size=pretrained.get("vocab_size"),
            max_batch_size=build.get("max_batch_size"),
            max_input_len=build.get("max_input_len"),
            max_seq_len=build.get("max_seq_len"),
            max_num_tokens=build.get("max_num_tokens"),
            version=cfg.get("version"),
        )

    @classmethod
    def read(cls, path: Path, check_ranks: bool = True) -> EngineDir:
        config = path / "config.json"
        if not config.is_file():
            raise EngineDirError(
                f"{path} is not a TensorRT-LLM engine folder (no config.json). Build one with "
                "`python build_scripts/build_trtllm_engine.py --checkpoint HF_DIR --output DIR`."
            )
        try:
            info = cls.from_config(path, json.loads(config.read_text()))
        except json.JSONDecodeError as e:
            raise EngineDirError(f"{config} is not valid JSON: {e}") from None
        if check_ranks:
            missing = [f"rank{r}.engine" for r in range(info.world_size)
                       if not (path / f"rank{r}.engine").is_file()]
            if missing:
                raise EngineDirError(
                    f"{path} is built for tp {info.tp_size} x pp {info.pp_size} = "
                    f"{info.world_size} ranks but lacks {', '.join(missing)}: the build did not "
                    "finish; run it again."
                )
        return info
