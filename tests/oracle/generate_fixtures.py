#!/usr/bin/env python3
"""Makes the tiny random-weight Hugging Face checkpoints the C++ model tests check against.

Each fixture is a directory tests/oracle/fixtures/<name>/ with what `save_pretrained`
writes (config.json, model.safetensors, generation_config.json) plus expected.json:
  prompt        token ids fed to the model
  logits        {position: [vocab floats]} from one full forward over the prompt
  greedy        32 tokens from generate(do_sample=False) after the prompt
  min_margin    smallest top1-top2 logit gap seen along the greedy path (so a reader can
                tell how much numerical slack the greedy check has)

Weights are drawn with a fixed seed and a wider spread than the HF default (std 0.02
gives near-uniform logits, where greedy decoding would hinge on rounding noise). Norm
weights and q/k/v biases are randomized too, so that every parameter is exercised.

Re-run (from the repository root):
  ~/.cache/shoal/oracle-venv/bin/python tests/oracle/generate_fixtures.py
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
NUM_GREEDY = 32
PROMPT = [1, 17, 200, 33, 5, 91, 250, 7, 128, 64, 3, 222, 45, 46, 47, 180, 99, 12, 240, 8]
LOGIT_POSITIONS = [0, 7, 13, len(PROMPT) - 1]

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5))


def add_legacy_rope_fields(config_path):
    """transformers 5 writes rope settings only as `rope_parameters`; checkpoints in the
    wild (and transformers 4) carry `rope_theta` and `rope_scaling`. Write both so the
    fixtures look like the configs our loader meets."""
    with open(config_path) as f:
        cfg = json.load(f)
    params = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" in params:
        cfg["rope_theta"] = params.pop("rope_theta")
    if params.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = params
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make(name, model_cls, config, seed):
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    randomize(model, seed)
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    add_legacy_rope_fields(os.path.join(path, "config.json"))

    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0]
        out = model.generate(
            ids,
            do_sample=False,
            max_new_tokens=NUM_GREEDY,
            min_new_tokens=NUM_GREEDY,  # never stop at eos: the test compares all 32
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    greedy = out.sequences[0, len(PROMPT):].tolist()
    # The checkpoint as written must load back to the same model (the added rope fields
    # must agree with rope_parameters).
    reloaded = model_cls.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits[0], logits), f"{name}: reload changed the logits"
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    expected = {
        "model": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": PROMPT,
        "logits": {str(p): [float(x) for x in logits[p]] for p in LOGIT_POSITIONS},
        "greedy": greedy,
        "min_margin": min(margins),
    }
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(expected, f)
    size = sum(os.path.getsize(os.path.join(path, x)) for x in os.listdir(path))
    print(f"{name}: {size} bytes, greedy={greedy[:8]}..., min_margin={min(margins):.4f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    make(
        "llama-tiny",
        LlamaForCausalLM,
        LlamaConfig(**COMMON, num_hidden_layers=3, rope_theta=10000.0, tie_word_embeddings=True),
        seed=1234,
    )
    # llama3 frequency scaling with a short original context, so the low-, mid- and
    # high-frequency branches all apply to a head_dim of 16.
    make(
        "llama3-rope-tiny",
        LlamaForCausalLM,
        LlamaConfig(
            **COMMON,
            num_hidden_layers=2,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        seed=99,
    )
    make(
        "qwen2-tiny",
        Qwen2ForCausalLM,
        Qwen2Config(**COMMON, num_hidden_layers=3, rope_theta=1000000.0, tie_word_embeddings=False),
        seed=4321,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
