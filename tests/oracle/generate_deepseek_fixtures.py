#!/usr/bin/env python3
"""Makes the tiny random-weight DeepSeek-V2/V3 checkpoints the C++ DeepSeek tests check
against, with transformers' DeepseekV2ForCausalLM / DeepseekV3ForCausalLM as the oracle.

Fixtures (tests/oracle/fixtures/<name>/: config.json, model.safetensors,
generation_config.json, expected.json as in generate_fixtures.py):
  deepseek-v2-tiny       low-rank q (q_lora_rank), softmax routing with
                         group_limited_greedy, YaRN rope (mscale = mscale_all_dim, so only
                         the softmax scale changes), two shared experts
  deepseek-v2-lite-tiny  plain q_proj (q_lora_rank null, as V2-Lite), greedy routing,
                         unscaled rope
  deepseek-v3-tiny       sigmoid routing with e_score_correction_bias (noaux_tc), groups,
                         norm_topk_prob, routed_scaling_factor, YaRN with mscale !=
                         mscale_all_dim (so cos/sin are scaled too), and a
                         multi-token-prediction layer appended to the checkpoint
                         (model.layers.<num_hidden_layers>.*) that loaders must skip

Each MoE fixture asserts that group-limited routing really excludes groups: for some
token, the experts transformers chose differ from the unrestricted top-k (an expert of
an excluded group would have won), and chosen experts never span more than topk_group
groups. expected.json also records `routing`: how many (layer, token) routings the group
limit changed, and the smallest gap between the k-th and (k+1)-th routing score seen
(slack for routing decisions).

Re-run (from the repository root):
  ~/.cache/shoal/oracle-venv/bin/python tests/oracle/generate_deepseek_fixtures.py
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
NUM_GREEDY = 32
PROMPT = [1, 17, 200, 33, 5, 91, 250, 7, 128, 64, 3, 222, 45, 46, 47, 180, 99, 12, 240, 8]
LOGIT_POSITIONS = [0, 7, 13, len(PROMPT) - 1]

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    moe_intermediate_size=16,
    n_routed_experts=16,
    num_experts_per_tok=4,
    first_k_dense_replace=1,
)

# Short original context: with qk_rope_head_dim 8 the blend ramp covers pairs 0..2, so
# extrapolated, blended and interpolated frequencies all occur.
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0)


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
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


def rewrite_config(path, extra):
    """Adds the fields real DeepSeek checkpoints carry (rope_theta and rope_scaling at the
    top level, as DeepSeek's own configuration writes them, plus `extra`)."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    params = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" in params:
        cfg["rope_theta"] = params.pop("rope_theta")
    if params.get("rope_type", "default") != "default":
        scaling = dict(params)
        scaling["type"] = scaling.pop("rope_type")  # DeepSeek's spelling
        cfg["rope_scaling"] = scaling
    cfg.update(extra)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def append_mtp_layer(path, config):
    """A multi-token-prediction module as DeepSeek-V3 ships it, after the last layer.
    transformers does not build it; the C++ loader must skip it."""
    st = os.path.join(path, "model.safetensors")
    tensors = load_file(st)
    n, h = config.num_hidden_layers, config.hidden_size
    g = torch.Generator().manual_seed(7)
    p = f"model.layers.{n}."
    tensors[p + "enorm.weight"] = torch.ones(h)
    tensors[p + "hnorm.weight"] = torch.ones(h)
    tensors[p + "eh_proj.weight"] = torch.randn(h, 2 * h, generator=g)
    tensors[p + "shared_head.norm.weight"] = torch.ones(h)
    tensors[p + "input_layernorm.weight"] = torch.ones(h)
    tensors[p + "self_attn.kv_a_proj_with_mqa.weight"] = torch.randn(
        config.kv_lora_rank + config.qk_rope_head_dim, h, generator=g)
    save_file(tensors, st, metadata={"format": "pt"})


class RoutingProbe:
    """Records, through forward hooks on each MoE router, whether group-limited routing
    changed the choice and how close the routing decisions were."""

    def __init__(self, model, config, sigmoid):
        self.config, self.sigmoid = config, sigmoid
        self.changed = 0
        self.total = 0
        self.min_gap = float("inf")
        self.handles = []
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(gate, "top_k"):
                self.handles.append(gate.register_forward_hook(self.hook))

    def hook(self, module, inputs, outputs):
        logits, _, chosen = outputs
        c = self.config
        k, groups, per_group = c.num_experts_per_tok, c.n_group, c.n_routed_experts // c.n_group
        if self.sigmoid:
            scores = logits.sigmoid() + module.e_score_correction_bias
        else:
            scores = logits.softmax(dim=-1)
        free = torch.topk(scores, k=k, dim=-1).indices
        for t in range(scores.shape[0]):
            mine = set(chosen[t].tolist())
            self.total += 1
            if mine != set(free[t].tolist()):
                self.changed += 1
            used = {e // per_group for e in mine}
            assert len(used) <= c.topk_group, f"experts {sorted(mine)} span {len(used)} groups"
            s = scores[t].clone()
            if groups > 1:
                allowed = torch.zeros_like(s, dtype=torch.bool)
                for e in mine:
                    g0 = (e // per_group) * per_group
                    allowed[g0:g0 + per_group] = True
                s = s.masked_fill(~allowed, float("-inf"))
            top = torch.topk(s, k=k + 1).values
            self.min_gap = min(self.min_gap, float(top[k - 1] - top[k]))


def make(name, model_cls, config, seed, extra_config=None, mtp=False, expect_group_limit=True):
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    randomize(model, seed)
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    rewrite_config(path, extra_config or {})
    if mtp:
        append_mtp_layer(path, config)

    sigmoid = model_cls is DeepseekV3ForCausalLM
    probe = RoutingProbe(model, config, sigmoid)
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
    for h in probe.handles:
        h.remove()
    if expect_group_limit:
        assert probe.changed > 0, f"{name}: group-limited routing never excluded a winning expert"
    greedy = out.sequences[0, len(PROMPT):].tolist()
    # The checkpoint as written (with the added config fields and any MTP layer) must
    # load back to the same model.
    reloaded = model_cls.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits[0], logits), f"{name}: reload changed the logits"
    margins = [float(torch.topk(s[0].float(), 2).values[0] - torch.topk(s[0].float(), 2).values[1]) for s in out.scores]
    expected = {
        "model": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": PROMPT,
        "logits": {str(p): [float(x) for x in logits[p]] for p in LOGIT_POSITIONS},
        "greedy": greedy,
        "min_margin": min(margins),
        "routing": {"group_limit_changed": probe.changed, "routings": probe.total,
                    "min_topk_gap": probe.min_gap},
    }
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(expected, f)
    size = sum(os.path.getsize(os.path.join(path, x)) for x in os.listdir(path))
    print(f"{name}: {size} bytes, greedy={greedy[:8]}..., min_margin={min(margins):.4f}, "
          f"group limit changed {probe.changed}/{probe.total} routings, min top-k gap {probe.min_gap:.2e}")


def main():
    os.makedirs(OUT, exist_ok=True)
    make(
        "deepseek-v2-tiny",
        DeepseekV2ForCausalLM,
        DeepseekV2Config(
            **COMMON, q_lora_rank=32, n_shared_experts=2, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", norm_topk_prob=False, routed_scaling_factor=2.0,
            rope_parameters=dict(YARN, rope_theta=10000.0, mscale=0.707, mscale_all_dim=0.707),
        ),
        seed=2024,
        extra_config={"scoring_func": "softmax", "moe_layer_freq": 1},
    )
    make(
        "deepseek-v2-lite-tiny",
        DeepseekV2ForCausalLM,
        DeepseekV2Config(
            **COMMON, q_lora_rank=None, n_shared_experts=2, n_group=1, topk_group=1, topk_method="greedy",
            norm_topk_prob=False, routed_scaling_factor=1.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=77,
        extra_config={"scoring_func": "softmax", "moe_layer_freq": 1},
        expect_group_limit=False,
    )
    make(
        "deepseek-v3-tiny",
        DeepseekV3ForCausalLM,
        DeepseekV3Config(
            **COMMON, q_lora_rank=32, n_shared_experts=1, n_group=4, topk_group=2, norm_topk_prob=True,
            routed_scaling_factor=2.5, num_nextn_predict_layers=1,
            rope_parameters=dict(YARN, rope_theta=10000.0, mscale=1.0, mscale_all_dim=0.8),
        ),
        seed=31337,
        extra_config={"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1},
        mtp=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
