#!/usr/bin/env python3
"""Writes the reference files the model tests read back: a tiny llama GGUF written by
llama.cpp's own `gguf` Python package and a safetensors file written by the `safetensors`
package (torch), so the C++ readers are checked against writers we did not write.

Run with the oracle virtualenv (it has torch, safetensors and gguf):
  ~/.cache/shoal/oracle-venv/bin/python tests/model/testdata/make_reference_files.py
"""
import os

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def values(n, seed, dtype):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(np.float32).astype(dtype)


def write_gguf():
    hidden, heads, kv_heads, ff, layers, vocab = 32, 2, 1, 64, 2, 8
    head_dim = hidden // heads
    w = gguf.GGUFWriter(os.path.join(HERE, "tiny_llama_ref.gguf"), "llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list([b"<s>", b"</s>", b"a", b"b", b"ab", b"\xc4\xa0", b"\xc4\xa0a", b"c"])
    w.add_token_types([3, 3, 1, 1, 1, 1, 1, 1])
    w.add_token_merges(["a b", "\u0120 a"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    # Values of every scalar type and a nested array, read back by the test.
    w.add_uint8("test.u8", 250)
    w.add_int16("test.i16", -1234)
    w.add_uint64("test.u64", 1 << 40)
    w.add_float64("test.f64", 0.125)
    w.add_array("test.nested", [[1, 2, 3], [4]])

    seed = 0

    def tensor(name, shape, dtype):
        nonlocal seed
        seed += 1
        n = int(np.prod(shape))
        if dtype == "q8_0":
            data = gguf.quants.quantize(values(n, seed, np.float32).reshape(shape),
                                        gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, values(n, seed, dtype).reshape(shape))

    tensor("token_embd.weight", (vocab, hidden), "q8_0")
    for l in range(layers):
        p = f"blk.{l}."
        tensor(p + "attn_norm.weight", (hidden,), np.float32)
        tensor(p + "attn_q.weight", (heads * head_dim, hidden), np.float16)
        tensor(p + "attn_k.weight", (kv_heads * head_dim, hidden), np.float16)
        tensor(p + "attn_v.weight", (kv_heads * head_dim, hidden), "q8_0")
        tensor(p + "attn_output.weight", (hidden, heads * head_dim), np.float16)
        tensor(p + "ffn_norm.weight", (hidden,), np.float32)
        tensor(p + "ffn_gate.weight", (ff, hidden), np.float16)
        tensor(p + "ffn_up.weight", (ff, hidden), np.float16)
        tensor(p + "ffn_down.weight", (hidden, ff), np.float16)
    tensor("output_norm.weight", (hidden,), np.float32)
    tensor("output.weight", (vocab, hidden), np.float16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors():
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "i64": torch.arange(3, dtype=torch.int64) - 1,
    }
    save_file(tensors, os.path.join(HERE, "reference.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    write_gguf()
    write_safetensors()
