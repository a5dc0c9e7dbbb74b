"""The in-process LLM benchmark's driver (`run_one_consumer`) on the CPU tiny engine: every
request of the closed loop runs to its token count, a given workload is cycled as
perf_analyzer cycles its input data (its prompts hit the prefix cache), and tokens/s is counted
over the window where every client has a request in flight."""

from __future__ import annotations

import pytest
from test_llm_paged_engine import make

from uip.bench.llm_inprocess import run_one_consumer


def test_one_consumer_cycles_the_workload_and_counts_its_window(llm_tiny_dir):
    engine = make(llm_tiny_dir, page_size=4)
    try:
        workload = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
        r = run_one_consumer(engine, 2, max_new_tokens=6, requests_per_client=4,
                             vocab=engine.vocab_size, workload=workload)
        assert (r.requests, r.output_tokens) == (8, 48)
        assert engine.stats().prefix_cache_hits > 0  # the cycled prompts were found again
        whole = r.output_tokens / r.seconds
        assert r.output_tokens_per_s > 0 and r.output_tokens_per_s != round(whole, 1)
        one = run_one_consumer(engine, 2, max_new_tokens=6, requests_per_client=1,
                               vocab=engine.vocab_size)
        # no window (one request per client): the whole run (`seconds` is rounded to 1 ms)
        assert one.output_tokens_per_s == pytest.approx(one.output_tokens / one.seconds, rel=0.1)
    finally:
        engine.shutdown()
