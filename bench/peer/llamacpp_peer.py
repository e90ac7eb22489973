"""Measures llama.cpp on a GGUF with the same workload shoal's cpu bench runs.

Prints `name: value` lines: decode_tokens_per_s (batch 1), prompt_tokens_per_s, and
aggregate_tokens_per_s for N concurrent greedy streams decoded in one batch per step.
"""
import argparse
import time

import llama_cpp
import numpy as np


def greedy_token(ctx, n_vocab, i):
    logits = llama_cpp.llama_get_logits_ith(ctx, i)
    return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--stream-tokens", type=int, default=64)
    a = ap.parse_args()

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(a.model.encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def new_ctx(n_ctx, n_batch, n_seq):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = n_batch
        p.n_seq_max = n_seq
        p.n_threads = a.threads
        p.n_threads_batch = a.threads
        return llama_cpp.llama_init_from_model(model, p)

    def decode(ctx, seqs):
        """seqs: list of (seq_id, [tokens], start_pos); logits for each seq's last token."""
        n = sum(len(t) for _, t, _ in seqs)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        k = 0
        last = []
        for sid, toks, pos in seqs:
            for j, t in enumerate(toks):
                batch.token[k] = t
                batch.pos[k] = pos + j
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = sid
                batch.logits[k] = j == len(toks) - 1
                k += 1
            last.append(k - 1)
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx, batch)
        llama_cpp.llama_batch_free(batch)
        if rc != 0:
            raise SystemExit(f"llama_decode failed: {rc}")
        return last

    prompt = [(i * 7919) % (n_vocab - 100) + 50 for i in range(a.prompt_tokens)]

    # prompt throughput: one sequence, the whole prompt in one batch
    ctx = new_ctx(a.prompt_tokens + a.decode_tokens + 8, a.prompt_tokens, 1)
    decode(ctx, [(0, prompt[:8], 0)])  # warm-up
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    t0 = time.perf_counter()
    last = decode(ctx, [(0, prompt, 0)])
    t1 = time.perf_counter()
    print(f"prompt_tokens_per_s: {a.prompt_tokens / (t1 - t0):.1f}")

    # decode at batch 1, continuing after a 32-token prompt
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    last = decode(ctx, [(0, prompt[:32], 0)])
    tok = greedy_token(ctx, n_vocab, last[0])
    t0 = time.perf_counter()
    for i in range(a.decode_tokens):
        last = decode(ctx, [(0, [tok], 32 + i)])
        tok = greedy_token(ctx, n_vocab, last[0])
    t1 = time.perf_counter()
    print(f"decode_tokens_per_s: {a.decode_tokens / (t1 - t0):.1f}")
    llama_cpp.llama_free(ctx)

    # aggregate: N streams, each with its own 32-token prompt, decoded together
    ctx = new_ctx(a.streams * (32 + a.stream_tokens + 8), 512, a.streams)
    seqs = [(s, prompt[s * 16:s * 16 + 32], 0) for s in range(a.streams)]
    last = decode(ctx, seqs)
    toks = [greedy_token(ctx, n_vocab, i) for i in last]
    t0 = time.perf_counter()
    for i in range(a.stream_tokens):
        last = decode(ctx, [(s, [toks[s]], 32 + i) for s in range(a.streams)])
        toks = [greedy_token(ctx, n_vocab, j) for j in last]
    t1 = time.perf_counter()
    print(f"aggregate_tokens_per_s: {a.streams * a.stream_tokens / (t1 - t0):.1f}")
    llama_cpp.llama_free(ctx)


if __name__ == "__main__":
    main()
