"""The gateway's chat prompt tokenizes as transformers' apply_chat_template (BOS once)."""

from __future__ import annotations

from uip import artifacts
from uip.core.paths import artifacts_root
from uip.gateway.chat_template import formatter_for


def test_prompt_tokens_equal_apply_chat_template():
    from transformers import AutoTokenizer

    artifacts.ensure(["llm-tiny"])
    fmt = formatter_for("llm-tiny")
    tok = AutoTokenizer.from_pretrained(artifacts_root() / "llm-tiny")
    for messages in ([{"role": "user", "content": "Hello"}],
                     [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "café 東京 😀"},
                      {"role": "assistant", "content": "Oui."},
                      {"role": "user", "content": ""}]):
        want = tok.apply_chat_template(messages, add_generation_prompt=True,
                                       tokenize=True)["input_ids"]
        prompt = fmt.render(messages)
        assert fmt.tokenizer.encode(prompt) == want
        assert fmt.count_tokens(prompt) == len(want)
        assert want.count(tok.bos_token_id) == 1
