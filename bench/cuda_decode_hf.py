#!/usr/bin/env python3
"""Hugging Face transformers peer of cuda-decode-bench: the same workload on the same GPU.

A model of the C++ bench's --shape (Qwen2ForCausalLM at DeepSeek-R1-Distill-Qwen-7B's
shape, or DeepseekV2ForCausalLM at DeepSeek-V2-Lite's, which needs a transformers that has
DeepSeek-V2), random init (from_config) in bf16 on the GPU; prefill each sequence's --context random tokens, then greedy decode with
the KV cache (a manual loop over the base model plus the LM head on the last position, as
generate() does without its bookkeeping). Prints `hf_*` lines in the C++ bench's names.

    python3 bench/cuda_decode_hf.py [--shape S] [--context 1024] [--decode-steps 64] [--batch 64]

Without torch, transformers or a GPU it prints "skipped: ..." and exits 0.
"""
import argparse
import sys
import time


def make_config(shape, layers):
    """The transformers config of the C++ bench's shape (cuda_decode_bench.cc)."""
    if shape == "deepseek-v2-lite":
        from transformers import DeepseekV2Config
        return DeepseekV2Config(
            vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
            num_hidden_layers=layers or 27, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
            n_routed_experts=64, num_experts_per_tok=6, routed_scaling_factor=1.0, kv_lora_rank=512,
            q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, topk_method="greedy",
            n_group=1, topk_group=1, moe_layer_freq=1, first_k_dense_replace=1, norm_topk_prob=False,
            max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
            rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                          "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707})
    from transformers import Qwen2Config
    return Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers or 28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, use_sliding_window=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch-steps", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--shape", default="r1-distill-qwen-7b", choices=["r1-distill-qwen-7b", "deepseek-v2-lite"])
    p.add_argument("--layers", type=int, default=0)
    # Accepted so the wrapper can pass the C++ bench's flags to both; transformers prefills
    # each batch in one forward.
    p.add_argument("--prefill-chunk", type=int, default=8192)
    # Shoal's --weights fp8 keeps FP8 matrices on the GPU; the peer stays bf16 either way.
    p.add_argument("--weights", default="bf16", choices=["bf16", "fp8"])
    p.add_argument("--cuda-graphs", action="store_true")  # Shoal's; the peer runs eagerly
    # cpu: this script's own check on a machine without a GPU (a layer or two, short
    # lengths), so an API change in transformers shows before a GPU run depends on it.
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001 - any import failure means no peer here
        print(f"skipped: transformers peer unavailable ({type(e).__name__}: {e})")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no GPU for torch")
        return 0
    dev = args.device

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()
    print(f"hf_versions: torch {torch.__version__} transformers {transformers.__version__}")
    try:
        config = make_config(args.shape, args.layers)
    except Exception as e:  # noqa: BLE001 - an older transformers without the architecture
        print(f"skipped: transformers {transformers.__version__} cannot build {args.shape} ({type(e).__name__}: {e})")
        return 0
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # from_config's dtype keyword differs across versions
    t0 = time.time()
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(torch.bfloat16).eval()
    sync()
    print(f"hf_init_s: {time.time() - t0:.1f}")
    base, head = model.model, model.lm_head

    def step(ids, cache):
        out = base(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = head(out.last_hidden_state[:, -1, :]).argmax(-1, keepdim=True)
        return nxt, out.past_key_values

    def run(batch, steps, warm=False):
        g = torch.Generator(device=dev).manual_seed(batch)
        ids = torch.randint(0, config.vocab_size, (batch, args.context), device=dev, generator=g)
        with torch.inference_mode():
            if warm:  # the first forward's one-time costs, untimed as in the C++ bench
                step(ids, None)
            sync()
            t = time.time()
            nxt, cache = step(ids, None)
            sync()
            prefill = time.time() - t
            for _ in range(args.warmup):
                nxt, cache = step(nxt, cache)
            sync()
            t = time.time()
            for _ in range(steps):
                nxt, cache = step(nxt, cache)
            sync()
            decode = time.time() - t
        del cache
        if dev == "cuda":
            torch.cuda.empty_cache()
        return batch * args.context / prefill, batch * steps / decode, 1e3 * decode / steps

    pre, tps, ms = run(1, args.decode_steps, warm=True)
    print(f"hf_context: {args.context}")
    print(f"hf_prefill_b1_tokens_per_s: {pre:.0f}")
    print(f"hf_decode_b1_tokens_per_s: {tps:.1f}")
    print(f"hf_decode_b1_ms_per_token: {ms:.3f}")
    if args.batch > 0:
        pre, tps, ms = run(args.batch, args.batch_steps)
        print(f"hf_prefill_b{args.batch}_tokens_per_s: {pre:.0f}")
        print(f"hf_decode_b{args.batch}_tokens_per_s: {tps:.1f}")
        print(f"hf_decode_b{args.batch}_ms_per_step: {ms:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
