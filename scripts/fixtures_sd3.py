"""SD 3 / SD 3.5 MMDiT fixtures (diffusers' `SD3Transformer2DModel`), called by make_fixtures.py.

Writes, under tests/fixtures/:
  mmdit_sd3, mmdit_qknorm, mmdit_dual   tiny random transformers (diffusers layout), inputs,
                                        float64 reference outputs and, for every block, the
                                        image-query -> text-key block of the joint softmax;
                                        mmdit_sd3 also has fp16 and sharded variants
  ctcal_sd3                             the whole CTCal loss (rectified flow) on mmdit_sd3
  manifests/sd3*_transformer.*          key manifests and config.json of the published configs
and, on request (`--full-size-sd3 DEST`), a random full-size SD 3 medium transformer with one
float32 reference forward (not committed).

Deterministic: fixed seeds. Only the SD 3 part: `make_fixtures.py --only sd3`.
"""

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from diffusers import SD3Transformer2DModel
from diffusers.models.normalization import RMSNorm
import torch.nn.functional as F

from fixture_common import (EXAMPLE_WORDS, FIX, ROOT, MapAutoEncoder, ctcal_parts,
                            example_context, f32, fresh_dir, randomize, resize,
                            save_file_ordered, write_manifest)


# ----------------------------------------------------------------------------------------------
# Capturing the joint attention
# ----------------------------------------------------------------------------------------------

class JointMapCapture:
    """Mirror of diffusers' `JointAttnProcessor2_0` (joint image + text attention of an MMDiT
    block's `attn`) that materialises softmax(QK^T / sqrt(d)) and records its image-query ->
    text-key block, probs[:, :, :N_img, N_img:] of shape [B, heads, N_img, N_txt] (rows of the
    joint softmax: not renormalised over the text keys)."""

    def __init__(self, name: str, store: dict):
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 *args, **kwargs):
        assert encoder_hidden_states is not None and attention_mask is None
        b, n_img, _ = hidden_states.shape

        def heads(x, head_dim):
            return x.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        # `sample` projections.
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = heads(q, head_dim), heads(k, head_dim), heads(v, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        # `context` projections.
        cq = heads(attn.add_q_proj(encoder_hidden_states), head_dim)
        ck = heads(attn.add_k_proj(encoder_hidden_states), head_dim)
        cv = heads(attn.add_v_proj(encoder_hidden_states), head_dim)
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)

        q = torch.cat([q, cq], dim=2)
        k = torch.cat([k, ck], dim=2)
        v = torch.cat([v, cv], dim=2)

        probs = (q @ k.transpose(-1, -2) * head_dim ** -0.5).softmax(dim=-1)
        self.store[self.name] = probs[:, :, :n_img, n_img:].detach().clone()
        out = (probs @ v).transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)

        img, txt = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            txt = attn.to_add_out(txt)
        img = attn.to_out[1](attn.to_out[0](img))
        return img, txt


def capture_joint_maps(model: SD3Transformer2DModel) -> dict:
    """Installs JointMapCapture on every block's joint `attn` (the dual blocks' `attn2`, image
    self-attention, keeps diffusers' processor); returns the dict it fills, keyed
    `transformer_blocks.{i}.attn`."""
    store = {}
    for i, block in enumerate(model.transformer_blocks):
        block.attn.set_processor(JointMapCapture(f"transformer_blocks.{i}.attn", store))
    return store


def norm_weight_test(model: torch.nn.Module):
    """`is_norm_weight` for `randomize`: weights of modules that are norms (the qk RMSNorms; all
    the MMDiT's LayerNorms are affine-free). The adaptive norms' `linear` layers (`norm1.linear`,
    `norm1_context.linear`, `norm_out.linear`) are ordinary linear layers despite the name."""
    names = {f"{m_name}.weight" for m_name, m in model.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, RMSNorm))
             and getattr(m, "weight", None) is not None}
    return lambda name: name in names


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Tiny MMDiT cases
# ----------------------------------------------------------------------------------------------

TINY_MMDIT = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=12,
    caption_projection_dim=16,
    pooled_projection_dim=10,
    pos_embed_max_size=8,
)

MMDIT_CASES = {
    # SD 3 shape: no qk norm, no dual attention; the last block is context_pre_only. Non-square
    # 6x4 patch grid cropped from the 8x8 position table, two float timesteps (1000 * sigma).
    "mmdit_sd3": dict(
        config=TINY_MMDIT,
        sample=(2, 4, 12, 8),
        tokens=5,
        timesteps=[37.5, 815.0],
        seed=21,
        variants=True,
    ),
    # qk RMSNorm (SD 3.5), square 4x4 grid, batch 1.
    "mmdit_qknorm": dict(
        config=dict(TINY_MMDIT, qk_norm="rms_norm"),
        sample=(1, 4, 8, 8),
        tokens=6,
        timesteps=[500.0],
        seed=22,
        variants=False,
    ),
    # SD 3.5 medium shape: qk RMSNorm and dual attention (attn2, SD35AdaLayerNormZeroX) in the
    # first two blocks; 5x7 grid.
    "mmdit_dual": dict(
        config=dict(TINY_MMDIT, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
        sample=(2, 4, 10, 14),
        tokens=4,
        timesteps=[1.0, 999.0],
        seed=23,
        variants=False,
    ),
}


def to_f64(model: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """A float64 copy (parameters and the pos_embed buffer, as stored)."""
    ref = SD3Transformer2DModel.from_config(model.config).to(torch.float64)
    ref.load_state_dict({k: v.to(torch.float64) for k, v in model.state_dict().items()})
    ref.eval()
    return ref


def mmdit_forward(model, inputs):
    dt = next(model.parameters()).dtype
    return model(hidden_states=inputs["hidden_states"].to(dt),
                 encoder_hidden_states=inputs["encoder_hidden_states"].to(dt),
                 pooled_projections=inputs["pooled_projections"].to(dt),
                 timestep=inputs["timestep"].to(dt)).sample


def mmdit_reference(model, inputs):
    """float64 forward with the joint maps captured, checked against diffusers' own processor."""
    ref = to_f64(model)
    with torch.no_grad():
        stock = mmdit_forward(ref, inputs)
        store = capture_joint_maps(ref)
        out = mmdit_forward(ref, inputs)
    diff = (out - stock).abs().max().item()
    assert diff < 1e-10, f"capturing processor changed the forward: max abs diff {diff}"
    assert len(store) == len(ref.transformer_blocks)
    return out, store


def make_mmdit_case(name: str, spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    model = SD3Transformer2DModel(**spec["config"])
    randomize(model, spec["seed"] + 100, norm_weight_test(model))
    model.eval()
    case = fresh_dir(FIX / name)
    model.save_pretrained(case / "transformer", safe_serialization=True)

    cfg = spec["config"]
    g = torch.Generator().manual_seed(spec["seed"] + 200)
    b = spec["sample"][0]
    inputs = {
        "hidden_states": torch.randn(spec["sample"], generator=g),
        "encoder_hidden_states": torch.randn((b, spec["tokens"], cfg["joint_attention_dim"]),
                                             generator=g),
        "pooled_projections": torch.randn((b, cfg["pooled_projection_dim"]), generator=g),
        "timestep": torch.tensor(spec["timesteps"], dtype=torch.float32),
    }
    save_file(f32(inputs), case / "inputs.safetensors")

    out, maps = mmdit_reference(model, inputs)
    save_file(f32({"out": out, **maps}), case / "outputs.safetensors")
    shapes = sorted({tuple(m.shape) for m in maps.values()})
    print(f"{name}: {n_params(model)} params, {len(maps)} maps {shapes}, "
          f"|out| max {out.abs().max().item():.3f}")

    if spec["variants"]:
        # fp16 variant (the pos_embed buffer is halved too) and the f32 output of the
        # fp16-rounded weights, run in float64.
        half = SD3Transformer2DModel.from_config(model.config)
        half.load_state_dict(model.state_dict())
        half = half.to(torch.float16)
        half.save_pretrained(case / "transformer_fp16", variant="fp16", safe_serialization=True)
        rounded = SD3Transformer2DModel.from_config(model.config)
        rounded.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
        out16, _ = mmdit_reference(rounded, inputs)
        save_file(f32({"out": out16}), case / "outputs_fp16.safetensors")
        # Sharded checkpoint with an index.
        sharded = case / "transformer_sharded"
        model.save_pretrained(sharded, max_shard_size="20KB", safe_serialization=True)
        shards = sorted(sharded.glob("*.safetensors"))
        assert len(shards) > 1 and (sharded / "diffusion_pytorch_model.safetensors.index.json").exists()
        print(f"{name}: fp16 variant, {len(shards)} shards")


# ----------------------------------------------------------------------------------------------
# The whole CTCal loss on the tiny MMDiT fixture (rectified flow), recomputed in float64
# ----------------------------------------------------------------------------------------------

def ctcal_sd3_reference(model, ae, x0, noise, ctx, pooled, s_stu, s_tea, nouns, cfg):
    """Mirror of make_fixtures.ctcal_reference for the MMDiT: x_s = (1 - s) x0 + s eps, fed
    timestep 1000 s, target eps - x0, maps from the joint attention's image -> text block
    (renormalised over the text tokens), per-sample weight s_stu."""
    p = model.config.patch_size
    H, W = x0.shape[-2:]
    gh, gw = H // p, W // p
    grid = (H // cfg["map_downscale"], W // cfg["map_downscale"])

    def noun_maps(sig):
        store = capture_joint_maps(model)
        s = sig.view(-1, 1, 1, 1)
        xs = (1 - s) * x0 + s * noise
        pred = model(hidden_states=xs, encoder_hidden_states=ctx, pooled_projections=pooled,
                     timestep=1000 * sig).sample
        layers = []
        for i in cfg["layers"]:
            probs = store[f"transformer_blocks.{i}.attn"]  # [b, heads, N_img, N_txt]
            b, heads, q, k = probs.shape
            assert q == gh * gw
            probs = probs / probs.sum(-1, keepdim=True)
            m = probs.mean(1).transpose(1, 2).reshape(b, k, gh, gw)
            layers.append(resize(m, grid))
        tok = torch.stack(layers).mean(0)  # [b, k, grid]
        per_sample = []
        for bi, groups in enumerate(nouns):
            if not groups:
                per_sample.append(None)
                continue
            per_sample.append(torch.stack([tok[bi, g].sum(0) for g in groups]))
        return pred, per_sample

    with torch.no_grad():
        _, teacher = noun_maps(s_tea)
        pred, student = noun_maps(s_stu)
    target = noise - x0
    diffusion = ((pred - target) ** 2).reshape(x0.shape[0], -1).mean(1).mean()

    return ctcal_parts(student, teacher, [s.item() for s in s_stu], diffusion, ae, cfg)


def make_ctcal_sd3_case() -> None:
    case = fresh_dir(FIX / "ctcal_sd3")
    model = SD3Transformer2DModel.from_pretrained(FIX / "mmdit_sd3" / "transformer")
    model = model.to(torch.float64)
    model.eval()
    torch.manual_seed(31)
    ae = MapAutoEncoder()
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()},
              case / "autoencoder.safetensors")
    ae = ae.double()
    g = torch.Generator().manual_seed(32)
    x0 = torch.randn((2, 4, 12, 8), generator=g)
    noise = torch.randn((2, 4, 12, 8), generator=g)
    ctx = torch.randn((2, 5, 12), generator=g)
    pooled = torch.randn((2, 10), generator=g)
    s_stu = torch.tensor([0.7, 0.45])
    s_tea = torch.tensor([0.05, 0.1])
    nouns = [[[1], [2, 3]], [[4]]]
    cfg = {"lambda": 1.0, "pixel": 1.0, "semantic": 1.0, "recon": 1.0, "balance": 0.1,
           "tau": 0.05, "map_downscale": 2, "layers": [0, 1, 2]}
    save_file_ordered(f32({"latents": x0, "noise": noise, "encoder_hidden_states": ctx,
                           "pooled_projections": pooled, "student": s_stu, "teacher": s_tea}),
                      case / "inputs.safetensors",
                      metadata={"nouns": json.dumps(nouns), "config": json.dumps(cfg)})
    # Everything from the stored (float32) values, in float64.
    with torch.no_grad():
        ref = ctcal_sd3_reference(model, ae, x0.double(), noise.double(), ctx.double(),
                                  pooled.double(), s_stu.double(), s_tea.double(), nouns, cfg)
    (case / "expected.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(f"ctcal_sd3: {ref}")


# ----------------------------------------------------------------------------------------------
# Full-size key manifests (meta device) and config.json of the published configs
# ----------------------------------------------------------------------------------------------

SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)

SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=list(range(13)))

SD35_LARGE = dict(SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                  qk_norm="rms_norm", dual_attention_layers=[])

SD3_MANIFESTS = {
    "sd3_medium_transformer": SD3_MEDIUM,
    "sd35_medium_transformer": SD35_MEDIUM,
    "sd35_large_transformer": SD35_LARGE,
}


def make_sd3_manifests() -> None:
    for name, cfg in SD3_MANIFESTS.items():
        with torch.device("meta"):
            model = SD3Transformer2DModel(**cfg)
        # What save_pretrained writes as config.json (all fields, _class_name,
        # _diffusers_version).
        write_manifest(name, model, model.to_json_string())


# ----------------------------------------------------------------------------------------------
# Full-size random SD 3 medium transformer (not committed)
# ----------------------------------------------------------------------------------------------

def make_full_size_sd3(dest: Path) -> None:
    """A random full-size SD 3 medium transformer (float32, 2.03 B parameters, 8.3 GB) in
    diffusers layout, with one float32 reference forward (32x32 latents, 333 tokens). Written as
    five shards of at most 2 GB plus an index (diffusers' default 10 GB would make one file), so
    the full-size load also goes through the sharded path. About 70 s and 9 GB peak memory on
    2 cores."""
    t0 = time.time()
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3_MEDIUM)
    model.eval()
    print(f"built: {n_params(model)} params, {time.time() - t0:.0f} s", flush=True)
    model.save_pretrained(dest / "transformer", max_shard_size="2GB", safe_serialization=True)
    print(f"saved: {time.time() - t0:.0f} s", flush=True)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn((1, 16, 32, 32), generator=g),
        "encoder_hidden_states": torch.randn((1, 333, 4096), generator=g),
        "pooled_projections": torch.randn((1, 2048), generator=g),
        "timestep": torch.tensor([321.0]),
    }
    save_file(f32(inputs), dest / "inputs.safetensors")
    with torch.no_grad():
        out = mmdit_forward(model, inputs)
    save_file(f32({"out": out}), dest / "outputs.safetensors")
    print(f"full-size SD 3 medium transformer written to {dest / 'transformer'} "
          f"({time.time() - t0:.0f} s)")


# The tiny embedded model of weights/tiny-sd3 (random weights, SD 3 layout at small width);
# the same config as ctcal::mmdit::SD3Transformer2DConfig::tiny().
TINY_SD3 = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16)


def make_embedded_sd3() -> None:
    torch.manual_seed(17)
    model = SD3Transformer2DModel(**TINY_SD3)
    randomize(model, 18, norm_weight_test(model))
    dest = ROOT / "weights" / "tiny-sd3"
    if (dest / "transformer").exists():
        shutil.rmtree(dest / "transformer")
    model.save_pretrained(dest / "transformer", safe_serialization=True)
    # A caption-like input: one pseudo-embedding per word (seeded by the word), as tiny-sd21.
    words = EXAMPLE_WORDS
    ctx = example_context()
    g = torch.Generator().manual_seed(19)
    inputs = {
        "hidden_states": torch.randn((1, 4, 32, 32), generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": ctx,
        "pooled_projections": ctx.mean(1),
    }
    save_file_ordered(f32(inputs), dest / "example_inputs.safetensors",
                      metadata={"tokens": json.dumps(words)})
    print(f"embedded tiny SD 3 transformer: {n_params(model)} params")


def make_all() -> None:
    for name, spec in MMDIT_CASES.items():
        make_mmdit_case(name, spec)
    make_ctcal_sd3_case()
    make_sd3_manifests()
    make_embedded_sd3()
