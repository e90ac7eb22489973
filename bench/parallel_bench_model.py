"""Writes a random-weight llama whose heads split over 2 and 4 tensor ranks, for
bench/parallel_bench's tensor-parallel numbers (SmolLM2's 9 heads allow only 3 and 9):
hidden 768, 12 heads, 4 kv heads, 8 layers, vocabulary 16384, f32, tied embeddings
(250 MB). Python's standard library only (no torch, no numpy), so it runs on a fresh
machine; the file is the Hugging Face layout (config.json + model.safetensors).
  python3 bench/parallel_bench_model.py /tmp/llama-tp-bench
"""
import array
import json
import os
import struct
import sys

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 768, 2048, 8, 12, 4, 64, 16384


def uniform(n: int, scale: float) -> bytes:
    """n f32 values uniform in [-scale, scale), from os.urandom (the values only need to be
    finite and of a sensible size: the bench compares runs of the same file)."""
    ints = array.array("h", os.urandom(2 * n))
    return array.array("f", (x * (scale / 32768.0) for x in ints)).tobytes()


def ones(n: int) -> bytes:
    return array.array("f", [1.0]).tobytes() * n


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    shapes = {"model.embed_tokens.weight": [VOCAB, HIDDEN], "model.norm.weight": [HIDDEN]}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [HIDDEN],
            p + "self_attn.q_proj.weight": [HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.k_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.v_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.o_proj.weight": [HIDDEN, HEADS * HEAD_DIM],
            p + "post_attention_layernorm.weight": [HIDDEN],
            p + "mlp.gate_proj.weight": [INTER, HIDDEN],
            p + "mlp.up_proj.weight": [INTER, HIDDEN],
            p + "mlp.down_proj.weight": [HIDDEN, INTER],
        })
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape in shapes.items():
            n = shape[0] * (shape[1] if len(shape) > 1 else 1)
            f.write(ones(n) if len(shape) == 1 else uniform(n, 0.05))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama-tp-bench")
