#!/usr/bin/env python3
"""Hugging Face transformers peer of cuda-decode-bench: the same workload on the same GPU.

A Qwen2ForCausalLM of DeepSeek-R1-Distill-Qwen-7B's shape, random init (from_config) in
bf16 on the GPU; prefill each sequence's --context random tokens, then greedy decode with
the KV cache (a manual loop over the base model plus the LM head on the last position, as
generate() does without its bookkeeping). Prints `hf_*` lines in the C++ bench's names.

    python3 bench/cuda_decode_hf.py [--context 1024] [--decode-steps 64] [--batch 64]

Without torch, transformers or a GPU it prints "skipped: ..." and exits 0.
"""
import argparse
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch-steps", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--layers", type=int, default=28)
    # Accepted so the wrapper can pass the C++ bench's flags to both; transformers prefills
    # each batch in one forward.
    p.add_argument("--prefill-chunk", type=int, default=8192)
    args = p.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, Qwen2Config
    except Exception as e:  # noqa: BLE001 - any import failure means no peer here
        print(f"skipped: transformers peer unavailable ({type(e).__name__}: {e})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no GPU for torch")
        return 0
    print(f"hf_versions: torch {torch.__version__} transformers {transformers.__version__}")
    config = Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=args.layers,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, use_sliding_window=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # from_config's dtype keyword differs across versions
    t0 = time.time()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(torch.bfloat16).eval()
    torch.cuda.synchronize()
    print(f"hf_init_s: {time.time() - t0:.1f}")
    base, head = model.model, model.lm_head

    def step(ids, cache):
        out = base(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = head(out.last_hidden_state[:, -1, :]).argmax(-1, keepdim=True)
        return nxt, out.past_key_values

    def run(batch, steps, warm=False):
        g = torch.Generator(device="cuda").manual_seed(batch)
        ids = torch.randint(0, config.vocab_size, (batch, args.context), device="cuda", generator=g)
        with torch.inference_mode():
            if warm:  # the first forward's one-time costs, untimed as in the C++ bench
                step(ids, None)
            torch.cuda.synchronize()
            t = time.time()
            nxt, cache = step(ids, None)
            torch.cuda.synchronize()
            prefill = time.time() - t
            for _ in range(args.warmup):
                nxt, cache = step(nxt, cache)
            torch.cuda.synchronize()
            t = time.time()
            for _ in range(steps):
                nxt, cache = step(nxt, cache)
            torch.cuda.synchronize()
            decode = time.time() - t
        del cache
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
