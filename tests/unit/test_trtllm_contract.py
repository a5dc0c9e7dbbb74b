"""The `tensorrt_llm` runtime passes the engine contract shared with the torch runtime.

TensorRT-LLM cannot be installed here, so `TrtllmEngine` runs against `support.fake_trtllm`, a
pure-Python stand-in for `tensorrt_llm.bindings.executor` (same constructor keywords, same
response semantics: end id left out of the output, stop words in it, one response per step
when streaming); what is tested is everything of the adapter: executor config, request and
response translation, end-id handling, cancellation, bookkeeping and stats.
"""

from __future__ import annotations

import pytest
from engine_contract import EngineContract
from support import fake_trtllm

from uip.trtllm.runtime import TrtllmEngine


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return fake_trtllm.write_engine_dir(tmp_path_factory.mktemp("trtllm") / "engine",
                                        vocab_size=64, max_batch_size=8, max_input_len=1024,
                                        max_seq_len=4096)


class TestTrtllmEngineContract(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, engine_dir):
        # 2 ms per step: slow enough for cancel tests to land mid-generation, fast overall
        eng = TrtllmEngine(engine_dir, executor_module=fake_trtllm.module(step_delay=0.002))
        yield eng
        eng.shutdown()

    @pytest.fixture(scope="class")
    @classmethod
    def prompts(cls):
        return [[1 + i, 7 + 2 * i, 3 + 3 * i] for i in range(10)]
