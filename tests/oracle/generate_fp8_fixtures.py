#!/usr/bin/env python3
"""Makes tiny checkpoints in DeepSeek-V3's FP8 release layout and their reference outputs.

The layout is what DeepSeek-V3/R1 ship: every linear projection weight is F8_E4M3
(`float8_e4m3fn`) with a sibling `<name>.weight_scale_inv` (f32, one scale per 128x128
block, shape [ceil(out/128), ceil(in/128)], weight = fp8 * scale_inv); embeddings, norms
and the output head stay 16-bit (bf16); config.json carries
  "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                           "weight_block_size": [128, 128], "activation_scheme": "dynamic"}.

The reference is Hugging Face transformers in f32 on the *dequantized* weights: each FP8
weight expanded as fp8.float() * scale_inv (per block, the last row/column block may be
partial), every bf16 tensor widened to f32. transformers' own FP8 loader on CPU derives the
block size from the scale grid (rows // grid_rows), which is wrong for partial blocks, so
the script dequantizes by the 128x128 definition itself.

Fixtures: fp8_llama_tiny (LlamaForCausalLM) and fp8_deepseek_v3_tiny (DeepseekV3ForCausalLM:
MLA, MoE with shared experts, the weight init and config fields of
generate_deepseek_fixtures.py). Sizes are chosen so that the matrices have full 128 blocks,
partial edges, or both.

fixtures/<name>/ = config.json, model.safetensors, generation_config.json, expected.json
(same fields as generate_fixtures.py, plus `weight_bytes`: FP8 codes + scales as stored,
and `dequantized_f32_bytes`: the same matrices widened to f32).

Re-run (from the repository root):
  ~/.cache/shoal/oracle-venv/bin/python tests/oracle/generate_fp8_fixtures.py
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_deepseek_fixtures as deepseek  # noqa: E402  (its weight init and config fields)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
BLOCK = 128
NUM_GREEDY = 32
PROMPT = [1, 17, 200, 33, 5, 91, 250, 7, 128, 64, 3, 222, 45, 46, 47, 180, 99, 12, 240, 8]
LOGIT_POSITIONS = [0, 7, 13, len(PROMPT) - 1]
QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [BLOCK, BLOCK],
}
E4M3_MAX = 448.0


def quantize_blockwise(w):
    """w [out, in] f32 -> (codes float8_e4m3fn [out, in], scale_inv f32 [ceil(out/128), ceil(in/128)]).
    Each block is scaled so its largest magnitude maps to 448, as DeepSeek's own quantizer does."""
    out, inp = w.shape
    gr, gc = math.ceil(out / BLOCK), math.ceil(inp / BLOCK)
    scale = torch.empty(gr, gc, dtype=torch.float32)
    codes = torch.empty(out, inp, dtype=torch.float8_e4m3fn)
    for i in range(gr):
        for j in range(gc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = blk.abs().max().clamp(min=1e-12) / E4M3_MAX
            scale[i, j] = s
            codes[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return codes, scale


def dequantize_blockwise(codes, scale):
    """The weight the checkpoint means: fp8 value * its block's scale, in f32."""
    out, inp = codes.shape
    s = scale.repeat_interleave(BLOCK, 0)[:out].repeat_interleave(BLOCK, 1)[:, :inp]
    return codes.to(torch.float32) * s


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


def is_fp8_projection(name, t):
    """Which tensors DeepSeek-V3 stores in FP8: the 2-D projection weights inside the layers
    (attention, dense MLP, experts, shared experts), not embeddings, norms, the MoE router
    gate or the output head."""
    return (t.dim() == 2 and name.startswith("model.layers.")
            and (name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")))


def to_release_layout(tensors):
    """Checkpoint tensors -> (the FP8 release layout, the same weights dequantized to f32,
    FP8 bytes as stored, the same matrices' f32 bytes)."""
    release, dequantized = {}, {}
    weight_bytes = f32_bytes = 0
    for name, t in tensors.items():
        t = t.float()
        if is_fp8_projection(name, t):
            codes, scale = quantize_blockwise(t)
            release[name] = codes.contiguous()
            release[name + "_scale_inv"] = scale.contiguous()
            dequantized[name] = dequantize_blockwise(codes, scale)
            weight_bytes += codes.numel() + scale.numel() * 4
            f32_bytes += codes.numel() * 4
        elif name.endswith("e_score_correction_bias"):
            release[name] = t.contiguous()  # f32 in the V3 release
            dequantized[name] = t
        else:
            b = t.to(torch.bfloat16).contiguous()
            release[name] = b
            dequantized[name] = b.float()
    return release, dequantized, weight_bytes, f32_bytes


def write_release_config(path, model_cls, extra):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(extra)
    cfg["architectures"] = [model_cls.__name__]
    cfg["quantization_config"] = QUANTIZATION_CONFIG
    cfg["torch_dtype"] = "bfloat16"
    cfg["dtype"] = "bfloat16"
    params = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" in params:
        cfg["rope_theta"] = params["rope_theta"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make(name, model_cls, config, seed, randomize_fn=None, rewrite_config_fn=None):
    """save_pretrained writes the checkpoint's own tensor names (per-expert weights for
    MoE); the reference is transformers' from_pretrained of the same checkpoint with every
    tensor replaced by its dequantized f32 value."""
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    (randomize_fn or randomize)(model, seed)
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    with tempfile.TemporaryDirectory() as ref_dir:
        model.save_pretrained(ref_dir, safe_serialization=True)
        if rewrite_config_fn is not None:
            rewrite_config_fn(ref_dir)
        st = os.path.join(ref_dir, "model.safetensors")
        release, dequantized, weight_bytes, f32_bytes = to_release_layout(load_file(st))
        save_file(dequantized, st, metadata={"format": "pt"})
        reference = model_cls.from_pretrained(ref_dir, dtype=torch.float32).eval()
        shutil.copytree(ref_dir, path)
    save_file(release, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    write_release_config(path, model_cls, {})

    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = reference(ids).logits[0]
        out = reference.generate(
            ids,
            do_sample=False,
            max_new_tokens=NUM_GREEDY,
            min_new_tokens=NUM_GREEDY,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    greedy = out.sequences[0, len(PROMPT):].tolist()
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
        "weight_bytes": weight_bytes,
        "dequantized_f32_bytes": f32_bytes,
    }
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(expected, f)
    size = sum(os.path.getsize(os.path.join(path, x)) for x in os.listdir(path))
    print(f"{name}: {size} bytes on disk, fp8 projections {weight_bytes} bytes resident "
          f"vs {f32_bytes} dequantized to f32, greedy={greedy[:8]}..., min_margin={min(margins):.4f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    # hidden 192 = one full 128 block + a 64 edge; k/v have 64 output rows (a lone partial
    # block); intermediate 320 = two full blocks + a 64 edge.
    make(
        "fp8_llama_tiny",
        LlamaForCausalLM,
        LlamaConfig(
            vocab_size=256,
            hidden_size=192,
            intermediate_size=320,
            num_attention_heads=6,
            num_key_value_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        seed=2024,
    )
    # DeepSeek-V3 (MLA with low-rank q/kv, sigmoid noaux_tc routing, YaRN) in its release
    # layout. Every FP8 matrix has a full 128 block or a partial edge or both: hidden 192,
    # q_lora_rank 160, kv_a rows 96 + 16, experts 64 x 192, dense MLP 256.
    make(
        "fp8_deepseek_v3_tiny",
        DeepseekV3ForCausalLM,
        DeepseekV3Config(
            vocab_size=256, hidden_size=192, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
            q_lora_rank=160, kv_lora_rank=96, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            moe_intermediate_size=64, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
            n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
            rope_parameters=dict(deepseek.YARN, rope_theta=10000.0, mscale=1.0, mscale_all_dim=0.8),
        ),
        seed=4242,
        randomize_fn=deepseek.randomize,
        rewrite_config_fn=lambda d: deepseek.rewrite_config(
            d, {"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
