#!/usr/bin/env python3
"""Regenerates the tokenizer fixtures in tests/tokenizer/fixtures/.

Hugging Face `tokenizers` (and `transformers` for chat templates) is the oracle: every
expected id list, decoded string and rendered prompt below comes from it, never from our
C++ code.

  * Small byte-level BPE tokenizers are trained deterministically on the fixed corpus
    below, one per pre-tokenizer family we support (Llama 3, Qwen2, DeepSeek V3, GPT-2
    with prefix space and flagged added tokens, and one exercising every Split behaviour).
    Their tokenizer.json files are committed.
  * The SmolLM2 tokenizer is rebuilt from the real GGUF's vocabulary and merges with the
    pre-tokenizer of HF's own SmolLM2 tokenizer.json (Digits(individual_digits) then
    ByteLevel); only the expected ids are committed, the C++ test reads the GGUF itself.
    When llama-cpp-python is available (here or in ~/.cache/shoal/llamacpp-venv) llama.cpp's
    tokenizer is consulted as a second, independent opinion and any disagreement printed.
  * Chat prompts are rendered by transformers' apply_chat_template from the SmolLM2 GGUF's
    own template and the well-known Llama 3 / Qwen2 / ChatML templates.

Run with a Python that has tokenizers, transformers and gguf:
  ~/.cache/shoal/oracle-venv/bin/python tests/tokenizer/gen_fixtures.py
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
MODELS_DIR = Path(os.environ.get("SHOAL_MODELS_DIR", Path.home() / ".cache/shoal/models"))
SMOLLM2_GGUF = MODELS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_V3_SPLITS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
     r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
]

CORPUS = """\
The quick brown fox jumps over the lazy dog. It's a well-known pangram; we'll use it again.
They're sure you've seen it, and I'd say he's right: don't worry, it isn't hard.
In 2024 the cluster served 1234567 requests at 99.95% availability, costing $3,141.59.
def tokenize(text: str) -> list[int]:
    return [vocab[piece] for piece in split(text)]  # comments and code
    if x == 10 and y != 20: print("hello, world!")
Machine learning models read tokens, not characters; tokenizers merge bytes into pieces.
Kubernetes schedules pods onto nodes, and the operator reconciles the desired state.
Tabs\tand  double  spaces,   triple spaces, and trailing spaces   
New lines

and blank lines matter to whitespace-aware pre-tokenizers.
Unicode: café, naïve, résumé, Ångström, São Paulo, Zürich, façade, coöperate.
日本語のテキストと中文文本，还有한국어 문장도 있습니다。東京は大きな都市です。
Emoji 😀 👍🏽 👨‍👩‍👧‍👦 ❤️ 🚀 are multi-byte; so are ½ ² ³ Ⅻ and ① digits.
Numbers like 3.14159, 2.71828, 1e-10, 0x1F, 1,000,000 and 42 are common in text.
Llama, Qwen, DeepSeek and SmolLM are model families; ChatML wraps turns in markers.
Shoal serves large language models on Kubernetes with a router and an operator.
"""

# Strings whose encodings are pinned; chosen to hit every corner of pre-tokenization,
# merging and added-token handling.
CASES = [
    "",
    " ",
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\there\t\tand\tthere",
    "line one\nline two\n\nline four\r\nwindows\r\n",
    "\n\n\n",
    "    indented code();\n        deeper();\n",
    "multiple     internal      spaces",
    "It's they're we've I'm you'll he'd IT'S THEY'RE",
    "1234567890",
    "3.14159 and 1,000,000 and 2024-06-01",
    "x1y22z333w4444",
    "café naïve résumé Ångström",
    "cafe\u0301 (combining acute) vs café",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA",
    "日本語のテキスト",
    "中文文本，还有标点。",
    "한국어 문장도 있습니다",
    "東京は大きな都市です。",
    "😀",
    "👍🏽 thumbs",
    "👨‍👩‍👧‍👦 family",
    "❤️🚀✨",
    "½ ² ³ Ⅻ ① ٣ ४",
    "mixed日本english中文123",
    "def f(x):\n\treturn x**2  # square\n",
    "<html><body>hi</body></html>",
    "email@example.com https://example.com/path?q=1&r=2",
    "a" * 300,
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 12,
    "\u00a0non-breaking\u2003em\u3000ideographic",
    "\u200bzero\u200dwidth\ufeff",
    "ends with newline\n",
    "!!!???...,,,;;;",
    "Ġ Ċ ĉ are byte-level spellings themselves",
]

rng = random.Random(1234)


def write_json(name, obj):
    path = OUT / name
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def train(pre_tokenizer, special_tokens, normalizer=None, vocab_size=900, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=special_tokens)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True) * 3, trainer=trainer)
    return tok


def decode_cases(tok, extra_texts=()):
    """Id sequences to decode: the encodings of some cases, runs of single byte tokens that
    form invalid UTF-8, and random ids."""
    vocab = tok.get_vocab()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    spell = {}
    # bytes_to_unicode, as in GPT-2: printable Latin-1 stands for itself.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    for b, c in zip(bs, cs):
        spell[b] = chr(c)
    assert set(spell.values()) == set(alphabet)

    def byte_ids(raw):
        # A vocabulary may lack bytes that never occur in UTF-8 (C0, C1, F5..FF).
        return [vocab[spell[b]] for b in raw if spell[b] in vocab]

    seqs = [
        byte_ids(b"\x80"),                    # lone continuation byte
        byte_ids(b"\xe2\x82"),                # truncated 3-byte sequence
        byte_ids(b"\xe2\x82\xac"),            # the whole euro sign
        byte_ids(b"ab\xf0\x9f\x98"),          # emoji cut before its last byte
        byte_ids(b"\xf0\x80\x80\x80"),        # overlong 4-byte form
        byte_ids(b"\xed\xa0\x80"),            # UTF-16 surrogate
        byte_ids(b"\xc0\xaf"),                # overlong slash
        byte_ids(b"\xff\xfe"),                # never valid
        byte_ids(b"\xe2\x28\xa1"),            # bad second byte
        byte_ids(b"\xf4\x90\x80\x80"),        # above U+10FFFF
        byte_ids(b"x\xc3"),                   # trailing lead byte
    ]
    for text in ["Hello, world!", "👨‍👩‍👧‍👦 family", "日本語のテキスト", "tabs\there", *extra_texts]:
        seqs.append(tok.encode(text, add_special_tokens=False).ids)
    size = tok.get_vocab_size()
    for _ in range(6):
        seqs.append([rng.randrange(size) for _ in range(rng.randrange(1, 12))])
    specials = [t.content for t in tok.get_added_tokens_decoder().values()]
    ids_with_special = []
    for s in specials[:3]:
        ids_with_special.append(vocab[s])
        ids_with_special += tok.encode("hi there", add_special_tokens=False).ids
    seqs.append(ids_with_special)
    out = []
    for ids in seqs:
        out.append({
            "ids": ids,
            "text": tok.decode(ids, skip_special_tokens=False),
            "text_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    return out


def encode_cases(tok, extra):
    out = []
    for text in CASES + extra:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        case = {"text": text, "ids": ids}
        if ids_plain != ids:
            case["ids_special_as_text"] = ids_plain
        out.append(case)
    return out


def write_tokenizer_fixture(name, tok, extra_cases, merges_as_strings=False):
    doc = json.loads(tok.to_str())
    if merges_as_strings:
        doc["model"]["merges"] = [f"{a} {b}" for a, b in doc["model"]["merges"]]
    path = OUT / f"{name}.tokenizer.json"
    path.write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    reloaded = Tokenizer.from_file(str(path))
    write_json(f"{name}.cases.json", {
        "tokenizer": path.name,
        "encode": encode_cases(reloaded, extra_cases),
        "decode": decode_cases(reloaded, [t for t in extra_cases if len(t) < 200]),
    })


def trained_tokenizers():
    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                      "<|end_header_id|>", "<|eot_id|>"]
    tok = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        llama_specials, ignore_merges=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    write_tokenizer_fixture("llama3_style", tok, [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
        "text<|eot_id|>more<|eot_id|><|eot_id|>",
        "<|eot_id",
    ])

    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        qwen_specials, normalizer=normalizers.NFC())
    # One added token matched after NFC, one matched on the raw text before it.
    tok.add_tokens([AddedToken("caf\u00e9", normalized=True),
                    AddedToken("e\u0301x", normalized=False)])
    write_tokenizer_fixture("qwen2_style", tok, [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "e\u0301\u0301 and \u1100\u1161\u11a8 decomposed",
        "cafe\u0301 time and caf\u00e9 time",
        "e\u0301x raw, \u00e9x composed",
    ], merges_as_strings=True)

    ds_specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
    tok = train(pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK_V3_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        ds_specials)
    write_tokenizer_fixture("deepseek_v3_style", tok, [
        "<｜begin▁of▁sentence｜><｜User｜>What is 12345+678?<｜Assistant｜>",
    ])

    # GPT-2 style: prefix space and the per-token flags of added tokens.
    tok = train(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), ["<|endoftext|>"])
    tok.add_tokens([
        AddedToken("<mask>", lstrip=True, rstrip=False, single_word=True, normalized=False),
        AddedToken("[NL]", rstrip=True, normalized=False),
        AddedToken("hello world", normalized=True),
        AddedToken("lo w", normalized=False),
    ])
    write_tokenizer_fixture("gpt2_style", tok, [
        "a <mask> b",
        "a<mask> b",
        "x   <mask>",
        "<mask>tail",
        "[NL]   next",
        "say hello world now",
        "hello worldhello world",
        "<|endoftext|>after",
        "before<|endoftext|>",
    ])

    # Every Split behaviour, inversion, a literal pattern and contiguous Digits.
    tok = train(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex(r"[,;]"), behavior="removed"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[:]"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[A-Z]"), behavior="contiguous", invert=True),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), ["</s>"])
    write_tokenizer_fixture("split_behaviors", tok, [
        "well-known co-op re-entry: key:value; a,b;c",
        "ABCdefGHI jk-LM:NO 12ab345",
        "--::--",
    ])


def smollm2_from_gguf():
    """The SmolLM2 tokenizer, rebuilt with HF tokenizers from the GGUF's vocabulary, with the
    pre-tokenizer of HF's own SmolLM2 tokenizer.json."""
    sys.path.insert(0, "/tmp/setup/ggufpy")
    from gguf import GGUFReader
    reader = GGUFReader(str(SMOLLM2_GGUF))
    field = lambda k: reader.fields[k].contents()
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field("tokenizer.ggml.merges")]
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    return tok, field("tokenizer.chat_template")


def llama_cpp_opinion(texts):
    """Token ids from llama.cpp for the same GGUF: from llama-cpp-python in this Python, or
    in the llamacpp-venv that scripts/setup.sh builds. None when neither is there."""
    script = (
        "import json, sys\n"
        "from llama_cpp import Llama\n"
        "texts = json.load(sys.stdin)\n"
        f"llm = Llama(model_path={str(SMOLLM2_GGUF)!r}, vocab_only=True, verbose=False)\n"
        "print(json.dumps([llm.tokenize(t.encode('utf-8'), add_bos=False, special=True) "
        "for t in texts]))\n")
    candidates = [sys.executable, str(Path.home() / ".cache/shoal/llamacpp-venv/bin/python")]
    for python in candidates:
        if not Path(python).exists():
            continue
        done = subprocess.run([python, "-c", script], input=json.dumps(texts), text=True,
                              capture_output=True)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
    return None


ENGLISH_WORDS = """time person year way day thing man world life hand part child eye woman place
work week case point government company number group problem fact be have do say get make go know
take see come think look want give use find tell ask work seem feel try leave call good new first
last long great little own other old right big high different small large next early young
important few public bad same able to of in for on with at by from up about into over after
the and a that I it not he as you this but his they her she or an will my one all would there
their what so if about who which when can like no just him people into year your some could them
than then now only its also back two how our well even because any these give day most us""".split()


def english_text(n_bytes=10240):
    r = random.Random(99)
    out, size = [], 0
    while size < n_bytes:
        words = [r.choice(ENGLISH_WORDS) for _ in range(r.randrange(6, 18))]
        sentence = " ".join(words).capitalize() + r.choice([".", ".", ".", "?", "!"])
        if r.random() < 0.15:
            sentence += f" In {r.randrange(1900, 2030)} it cost ${r.randrange(1, 999)}.{r.randrange(10, 99)}."
        if r.random() < 0.1:
            sentence += "\n\n"
        else:
            sentence += " "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_bytes]


def smollm2_fixtures():
    tok, template = smollm2_from_gguf()
    text_10k = english_text()
    (OUT / "english_10k.txt").write_text(text_10k, encoding="utf-8")
    extra = [
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "<|im_start|",
        "text<jupyter_code>code<empty_output>",
        text_10k,
    ]
    cases = encode_cases(tok, extra)
    write_json("smollm2_gguf.cases.json", {
        "source": "SmolLM2-135M-Instruct.Q4_1.gguf vocab+merges, HF tokenizers with "
                  "Digits(individual_digits=true) + ByteLevel(add_prefix_space=false)",
        "encode": cases,
        "decode": decode_cases(tok, [t for t in extra if len(t) < 200]),
    })
    opinion = llama_cpp_opinion([c["text"] for c in cases])
    if opinion is None:
        print("llama-cpp-python not available; no second opinion")
    else:
        disagree = [c["text"][:40] for c, ids in zip(cases, opinion) if ids != c["ids"]]
        print(f"llama.cpp agrees on {len(cases) - len(disagree)}/{len(cases)} SmolLM2 cases")
        for d in disagree:
            print(f"  llama.cpp differs on: {d!r}")
    return template


LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "  Tell me a joke.\n\n"}],
    [{"role": "user", "content": "\t多语言 😀 text with trailing space \u3000"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
]


def chat_fixtures(smollm2_template):
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>")
    cases = []
    for family, source in [("SmolLM2", smollm2_template), ("Llama3", LLAMA3_TEMPLATE),
                           ("Qwen2", QWEN2_TEMPLATE), ("ChatML", CHATML_TEMPLATE)]:
        for messages in CONVERSATIONS:
            for gen in (True, False):
                cases.append({
                    "family": family,
                    "messages": messages,
                    "add_generation_prompt": gen,
                    "expected": hf.apply_chat_template(messages, chat_template=source,
                                                       tokenize=False, add_generation_prompt=gen),
                })
    write_json("chat_templates.json", {
        "templates": {"SmolLM2": smollm2_template, "Llama3": LLAMA3_TEMPLATE,
                      "Qwen2": QWEN2_TEMPLATE, "ChatML": CHATML_TEMPLATE},
        "cases": cases,
    })


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    trained_tokenizers()
    template = smollm2_fixtures()
    chat_fixtures(template)


if __name__ == "__main__":
    main()
