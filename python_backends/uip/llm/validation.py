"""The length and vocabulary rules of a generation request, in one place (pure).

The pre-processor (client `max_tokens`), llm_engine's tensor contract (`request_output_len`)
and both runtimes (their own context and vocabulary) check through these functions, so the
rule and its message are the same wherever a request is refused.
"""

from __future__ import annotations

from uip.core.inputs import InvalidInput
from uip.llm import sampling
from uip.llm.engine import GenerationRequest, SamplingParams


def check_max_tokens(value: int, cap: int, name: str) -> None:
    """`name` (the input as the caller sent it) must be in [1, cap]."""
    if value < 1:
        raise InvalidInput(f"'{name}' must be >= 1, got {value}")
    if value > cap:
        raise InvalidInput(f"'{name}' is {value}, above this deployment's cap of {cap} tokens "
                           "(limits.max_tokens)")


def check_context(prompt_tokens: int, new_tokens: int, max_context: int | None,
                  name: str = "max_tokens", source: str = "limits.max_context") -> None:
    """The one rule: prompt + new tokens must fit the context."""
    if max_context is not None and prompt_tokens + new_tokens > max_context:
        raise InvalidInput(
            f"the prompt ({prompt_tokens} tokens) + {name} ({new_tokens}) exceeds the context "
            f"length of {max_context} tokens ({source}); shorten the prompt or ask for fewer "
            "tokens")


def check_generation(req: GenerationRequest, vocab_size: int | None,
                     max_context: int | None, context_source: str = "the model's context",
                     ) -> SamplingParams | None:
    """What every runtime checks before it runs a request; returns the effective sampling
    (None = greedy)."""
    if not req.input_ids:
        raise InvalidInput("input_ids is empty: a prompt needs at least one token")
    if req.max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
    if vocab_size is not None:
        bad = [t for t in req.input_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidInput(f"input_ids holds {bad[0]}, outside the vocabulary "
                               f"[0, {vocab_size})")
        for name, words in (("stop_words", req.stop_words), ("bad_words", req.bad_words)):
            if any(not 0 <= t < vocab_size for w in words for t in w):
                raise InvalidInput(f"{name} holds a token outside the vocabulary")
        if req.end_id is not None and not 0 <= req.end_id < vocab_size:
            raise InvalidInput(f"end_id {req.end_id} is outside the vocabulary")
    check_context(len(req.input_ids), req.max_new_tokens, max_context, "max_new_tokens",
                  context_source)
    return sampling.effective(req.sampling)
