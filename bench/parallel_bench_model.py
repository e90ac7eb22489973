"""Writes a random-weight llama whose heads split over 2 and 4 tensor ranks, for
bench/parallel_bench's tensor-parallel numbers (SmolLM2's 9 heads allow only 3 and 9).
Not committed: run with the oracle venv, e.g.
  ~/.cache/shoal/oracle-venv/bin/python bench/parallel_bench_model.py /tmp/llama-tp-bench
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                         num_key_value_heads=4, head_dim=64, vocab_size=16384, max_position_embeddings=2048,
                         tie_word_embeddings=True, torch_dtype="float32")
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    print(out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama-tp-bench")
