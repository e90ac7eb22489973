"""Records llama.cpp's teacher-forced top-1 predictions on the default SmolLM2 GGUF.

Writes tests/oracle/fixtures/smollm2_llamacpp_top1.json: the text, llama.cpp's token ids
for it, and at each of the first 256 positions the id llama.cpp ranks first for the next
token and its margin over the second (top-1 logit minus top-2 logit). The C++ oracle test
feeds the same ids through our engine and requires >= 98% top-1 agreement.

llama.cpp evaluates one token per decode step here (n_batch = 1), like the test drives our
engine: a batched evaluation takes other kernels (tiled matmuls for the lm_head and
attention) whose float sums differ in order, and on its own agrees with the one-token
evaluation on only ~97% of positions, since this model has many near-ties. The rest of the
configuration is llama.cpp's default for the CPU: f16 KV cache, no flash attention. One
thread: each output element is computed whole by one thread, so the thread count does not
change the numbers, and one thread is fastest for single-token steps on a loaded machine.

Run with the llama.cpp venv:  $(bench/peer/setup_llamacpp.sh) tests/oracle/llamacpp_top1.py
"""
import hashlib
import json
import os
import sys

import llama_cpp
import numpy as np

TEXT = (
    "The history of the lighthouse is a story about people who lived at the edge of the "
    "land and the sea. Before electric lamps, keepers climbed the tower every evening to "
    "trim the wicks and polish the great lenses, so that ships passing in the dark could "
    "find their way around rocks and sandbars. Many keepers brought their families to the "
    "island, and children learned to read by the same light that guided the sailors. "
    "In winter, storms cut the station off from the mainland for weeks at a time, and the "
    "keeper kept a careful log of the weather, the ships he saw, and the oil he burned. "
    "Today most lighthouses are automatic. A small computer switches the lamp on at dusk "
    "and off at dawn, and a radio beacon reaches much farther than any flame ever could. "
    "Still, people visit the old towers in great numbers. They climb the narrow stairs, "
    "look out over the water, and try to imagine the long nights of the keepers who once "
    "lived there. Some towers have become museums, others small hotels, and a few are "
    "still tended by volunteers who believe that a light on the coast should always have "
    "someone watching over it. When the fog rolls in and the horn sounds across the bay, "
    "it is easy to understand why sailors once called these towers the friends of the sea, "
    "and why so many towns still paint them on their flags, their signs and their stamps."
)
POSITIONS = 256


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/shoal/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = os.path.join(os.path.dirname(__file__), "fixtures", "smollm2_llamacpp_top1.json")
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=512, n_batch=1, n_ubatch=1, n_threads=1,
                          n_threads_batch=1, flash_attn=False, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    if len(ids) < POSITIONS + 1:
        raise SystemExit(f"text has only {len(ids)} tokens; need {POSITIONS + 1}")
    ids = ids[:POSITIONS + 1]
    for token in ids[:POSITIONS]:  # one decode step per token; the last id is only a target
        llm.eval([token])
    logits = np.asarray(llm.scores[:POSITIONS], dtype=np.float32)
    top1 = [int(i) for i in logits.argmax(axis=1)]
    top2 = np.sort(logits, axis=1)[:, -2:]
    margins = [round(float(m), 5) for m in top2[:, 1] - top2[:, 0]]
    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    json.dump({
        "model_file": os.path.basename(model_path),
        "model_sha256": digest,
        "peer": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "peer_mode": "one token per decode step (n_batch=1), f16 KV cache, no flash attention",
        "text": TEXT,
        "token_ids": ids,
        "top1": top1,
        "top1_margin": margins,
    }, open(out, "w"), indent=None)
    print(f"wrote {out}: {len(top1)} positions")


if __name__ == "__main__":
    main()
