"""`artifacts/llm-tiny/`: a tiny Llama (GQA) with a byte-level BPE tokenizer, built offline.

Deterministic and independent of the machine: the tokenizer trains on text generated here
from a fixed seed (English words, pseudo-words, code, numbers, accented/CJK/Cyrillic text and
emoji, so multi-byte characters span several tokens), and the weights come from numpy's frozen
legacy generator (`RandomState(0)`), not from torch's, so the bytes do not depend on the torch
version. The folder is a plain transformers checkpoint (`from_pretrained` loads it); any
Llama-family checkpoint folder can replace it by changing the spec's `artifact.path`.
"""

from __future__ import annotations

import random
from pathlib import Path

VOCAB_SIZE = 4096
SEED = 0
MAX_POSITIONS = 2048
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]  # ids 0..5
# Zephyr-style; every turn ends with EOS, so EOS also ends an assistant reply.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = """the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number sound
no most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every good
me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well also
play small end put home read hand port large spell add even land here must big high such follow
act why ask men change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story saw far sea draw left late run while press close night
real life few north open seem together next white children begin got walk example ease paper
group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel
talk bird soon body dog family direct pose leave song measure door product black short numeral
class wind question happen complete ship area half rock order fire south problem piece told
knew pass since top whole king space heard best hour better true during hundred five remember
step early hold west ground interest reach fast verb sing listen six table travel less morning
model server request token batch stream engine cache query tensor inference latency throughput
""".split()
_CODE_WORDS = """def return class import from self None True False if else elif for while in
not and or with as try except finally raise yield lambda print len range list dict set tuple
str int float bool open read write append extend items keys values join split strip format
""".split()
_INTERNATIONAL = """café naïve façade résumé über straße Zürich señor mañana São Paulo crème
brûlée jalapeño déjà vu coöperate Ærø Øresund Łódź Kraków Dvořák smörgåsbord fiancée piñata
東京 日本語 中文 北京 你好 世界 学习 机器 模型 推理 服务 数据 こんにちは ありがとう カタカナ
ひらがな 한국어 안녕하세요 привет мир спасибо данные модель καλημέρα κόσμος αλφάβητο مرحبا
بالعالم नमस्ते दुनिया สวัสดี 😀 😂 🚀 👍 🎉 ❤️ 🔥 🌍 🤖 ✨ 🍕 🐍 ☕ 🎵 👋🏽 👨‍👩‍👧 ∑ ∞ ≤ ≥ → ← ★ € £ ¥ ©
""".split()
# (first, last) code points: CJK ideographs, Hangul, emoji, accented Latin
_RARE_BLOCKS = [(0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F5FF), (0x00C0, 0x017F)]
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu"]


def corpus(seed: int = 1234, sentences: int = 30000) -> str:
    """~2 MB of deterministic training text (stable across Python versions: only
    `random.Random(int)`'s `random()` is used)."""
    rng = random.Random(seed)
    pick = rng.random

    def choice(seq):
        return seq[int(pick() * len(seq))]

    pseudo = ["".join(choice(_SYLLABLES) for _ in range(1 + int(pick() * 3)))
              for _ in range(3000)]
    # Zipf-like: a word's chance falls with its rank
    ranked = _WORDS + pseudo
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(ranked))]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w / total
        cum.append(acc)

    def zipf_word() -> str:
        r = pick()
        lo, hi = 0, len(cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        return ranked[lo]

    out: list[str] = []
    for i in range(sentences):
        kind = pick()
        if kind < 0.70:
            words = [zipf_word() for _ in range(4 + int(pick() * 12))]
            words[0] = words[0].capitalize()
            if pick() < 0.15:
                words.insert(int(pick() * len(words)), str(int(pick() * 10000)))
            out.append(" ".join(words) + choice([".", ".", ".", "?", "!", ",", ";", ":"]))
        elif kind < 0.85:
            name = "_".join(zipf_word() for _ in range(1 + int(pick() * 2)))
            args = ", ".join(zipf_word() for _ in range(int(pick() * 3)))
            body = " ".join(choice(_CODE_WORDS) for _ in range(2 + int(pick() * 5)))
            out.append(f"def {name}({args}):\n    {body}\n    return {zipf_word()}\n")
        else:
            # fixed words (merged into tokens) and rare characters (left as byte pieces)
            words = [choice(_INTERNATIONAL) for _ in range(2 + int(pick() * 8))]
            for _ in range(int(pick() * 4)):
                block = choice(_RARE_BLOCKS)
                rare = "".join(chr(block[0] + int(pick() * (block[1] - block[0])))
                               for _ in range(1 + int(pick() * 3)))
                words.insert(int(pick() * len(words)), rare)
            out.append(" ".join(words) + choice(["。", ".", "!", "", "?"]))
        out.append("\n\n" if i % 7 == 6 else " ")
    return "".join(out)


def build_tokenizer(vocab_size: int = VOCAB_SIZE, text: str | None = None):
    """A byte-level BPE tokenizer trained on `text` (default: `corpus()`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus() if text is None else text
    chunks = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    # Llama-style: encoding adds BOS; the chat template writes BOS itself and
    # apply_chat_template encodes without special tokens, so BOS appears once either way.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer trained to {tok.get_vocab_size()} tokens, not {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer, seed: int = SEED):
    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                values = rng.normal(0.0, config.initializer_range, size=tuple(param.shape))
                param.copy_(torch.from_numpy(values.astype(np.float32)))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model.eval()


def build(dest: Path) -> None:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(dest)
    build_model(tokenizer).save_pretrained(dest, safe_serialization=True)
