"""Parity fixtures for the ctcal crate, written by diffusers itself.

Builds tiny random models with diffusers' real classes and key names, runs them in float64 on
CPU, and writes weights (diffusers folder layout), inputs and reference outputs as safetensors
under tests/fixtures/<case>/. Also writes the key manifests of the full-size published configs
(built on the meta device, no weights) and the tiny embedded model under weights/.

The SD 3 / SD 3.5 MMDiT cases (mmdit_*, ctcal_sd3, sd3*_transformer manifests) live in
scripts/fixtures_sd3.py; the LoRA cases (lora/, on the unet_sd2 and mmdit_sd3 weights) in
scripts/fixtures_lora.py; the VAE cases (vae_*, *_vae manifests) in scripts/fixtures_vae.py;
the tokenizer cases (tokenizers/) in scripts/fixtures_text_tok.py; the text-encoder cases (text/,
CLIP/T5 manifests) in scripts/fixtures_text_enc.py; the samplers in scripts/fixtures_samplers.py;
the tiny pipelines and generation references in scripts/fixtures_pipeline.py; shared helpers in
scripts/fixture_common.py.

Run through scripts/make_fixtures.sh (pinned venv). Deterministic: fixed seeds.
    make_fixtures.py                       everything
    make_fixtures.py --only unet           UNet cases, schedules, ctcal_sd2, UNet manifests,
                                           embedded weights/tiny-sd21
    make_fixtures.py --only sd3            MMDiT cases, ctcal_sd3, SD 3 manifests
    make_fixtures.py --only lora           LoRA files and outputs (reads unet_sd2, mmdit_sd3)
    make_fixtures.py --only vae            VAE cases (AutoencoderKL), SD 2.1 / SD 3 VAE manifests
    make_fixtures.py --only tok            tokenizer folders (trained tiny CLIP BPE and T5
                                           unigram vocabularies) and transformers' ids for
                                           ~300 captions; copies under weights/tiny-sd*/
    make_fixtures.py --only text           CLIP/T5 text encoders, SD 3 conditioning, their manifests
    make_fixtures.py --only sched          DDIM and flow Euler sampler trajectories
    make_fixtures.py --only pipeline       tiny pipelines weights/tiny-sd21, tiny-sd3 (reads the
                                           tiny denoisers and tokenizers) and generation references
    make_fixtures.py --full-size DEST      random full-size SD 2.1 UNet (not committed)
    make_fixtures.py --full-size-sd3 DEST  random full-size SD 3 medium transformer (not committed)
    make_fixtures.py --full-size-pipeline DEST
                                           random full-size SD 2.1 pipeline (diffusers layout)
                                           and diffusers' f32 512x512 generation (not committed)
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
import torch.nn.functional as F

from fixture_common import (EXAMPLE_WORDS, FIX, ROOT, MapAutoEncoder, ctcal_parts,
                            example_context, f32, fresh_dir, randomize, resize,
                            save_file_ordered, write_manifest)
import fixtures_lora
import fixtures_pipeline
import fixtures_samplers
import fixtures_sd3
import fixtures_vae
import fixtures_text_tok
import fixtures_text_enc


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

class MapCapture:
    """An attention processor that materialises softmax(QK^T) and records it.

    It mirrors diffusers' `AttnProcessor` for the plain `Attention` of BasicTransformerBlock
    (no group norm, spatial norm or residual connection in SD's cross-attention layers).
    """

    def __init__(self, name: str, store: dict):
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        assert attention_mask is None and attn.group_norm is None and attn.spatial_norm is None
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        self.store[self.name] = probs.reshape(b, attn.heads, n, -1).detach().float().clone()
        out = torch.bmm(probs.to(v.dtype), v)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))
        assert not attn.residual_connection and attn.rescale_output_factor == 1.0
        return out


def capture_cross_maps(unet: UNet2DConditionModel) -> dict:
    """Installs MapCapture on every attn2; returns the dict it fills."""
    store = {}
    procs = {}
    for key, proc in unet.attn_processors.items():
        name = key[: -len(".processor")]
        procs[key] = MapCapture(name, store) if name.endswith("attn2") else proc
    unet.set_attn_processor(procs)
    return store


# ----------------------------------------------------------------------------------------------
# UNet cases
# ----------------------------------------------------------------------------------------------

UNET_CASES = {
    # SD 2.x shape: linear projections, upcast attention, per-block lists, a plain DownBlock2D and
    # UpBlock2D, two transformer layers in the first level, non-square input, two timesteps.
    "unet_sd2": dict(
        config=dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[16, 16, 32],
            layers_per_block=[1, 2, 1],
            transformer_layers_per_block=[2, 1, 1],
            attention_head_dim=[2, 2, 4],
            cross_attention_dim=12,
            norm_num_groups=4,
            use_linear_projection=True,
            upcast_attention=True,
            flip_sin_to_cos=True,
            freq_shift=0,
        ),
        sample=(2, 4, 16, 12),
        tokens=7,
        timesteps=[37.0, 815.0],
        seed=1,
        variants=True,
    ),
    # SD 1.x shape: 1x1 conv projections, one head count for all blocks, no upcast, sin first
    # with freq_shift 1, odd latent width (exercises diffusers' upsample_size), batch 1.
    "unet_sd1": dict(
        config=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[16, 32],
            layers_per_block=2,
            attention_head_dim=4,
            cross_attention_dim=10,
            norm_num_groups=8,
            norm_eps=1e-6,
            use_linear_projection=False,
            upcast_attention=False,
            flip_sin_to_cos=False,
            freq_shift=1,
            mid_block_scale_factor=1.5,
        ),
        sample=(1, 4, 10, 9),
        tokens=5,
        timesteps=[500.5],
        seed=2,
        variants=False,
    ),
}


def unet_reference(unet, sample, timesteps, ctx):
    """float64 forward with attn2 maps captured."""
    ref = UNet2DConditionModel.from_config(unet.config).to(torch.float64)
    ref.load_state_dict({k: v.to(torch.float64) for k, v in unet.state_dict().items()})
    ref.eval()
    store = capture_cross_maps(ref)
    with torch.no_grad():
        out = ref(sample.double(), timesteps.double(), encoder_hidden_states=ctx.double()).sample
    return out, store


def make_unet_case(name: str, spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    unet = UNet2DConditionModel(**spec["config"])
    randomize(unet, spec["seed"] + 100)
    unet.eval()
    case = fresh_dir(FIX / name)
    unet.save_pretrained(case / "unet", safe_serialization=True)

    g = torch.Generator().manual_seed(spec["seed"] + 200)
    b = spec["sample"][0]
    sample = torch.randn(spec["sample"], generator=g)
    ctx = torch.randn((b, spec["tokens"], spec["config"]["cross_attention_dim"]), generator=g)
    timesteps = torch.tensor(spec["timesteps"], dtype=torch.float32)
    save_file(f32({"sample": sample, "timestep": timesteps, "encoder_hidden_states": ctx}),
              case / "inputs.safetensors")

    out, maps = unet_reference(unet, sample, timesteps, ctx)
    save_file(f32({"out": out, **maps}), case / "outputs.safetensors")
    print(f"{name}: {sum(p.numel() for p in unet.parameters())} params, {len(maps)} maps")

    if spec["variants"]:
        # fp16 variant, as `save_pretrained(variant="fp16")` writes it, and the f32 output of
        # the fp16-rounded weights (what a loader that casts to f32 must reproduce).
        half = UNet2DConditionModel.from_config(unet.config)
        half.load_state_dict(unet.state_dict())
        half = half.to(torch.float16)
        half.save_pretrained(case / "unet_fp16", variant="fp16", safe_serialization=True)
        rounded = UNet2DConditionModel.from_config(unet.config)
        rounded.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
        out16, _ = unet_reference(rounded, sample, timesteps, ctx)
        save_file(f32({"out": out16}), case / "outputs_fp16.safetensors")
        # Sharded checkpoint with an index.
        unet.save_pretrained(case / "unet_sharded", max_shard_size="400KB", safe_serialization=True)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------

def make_schedules() -> None:
    case = fresh_dir(FIX / "schedules")
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn((3, 4, 5, 6), generator=g)
    noise = torch.randn((3, 4, 5, 6), generator=g)
    t = torch.tensor([0, 421, 999])
    out = {"x0": x0, "noise": noise, "timesteps": t.float()}
    for pred in ["epsilon", "v_prediction"]:
        ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", prediction_type=pred)
        out["alphas_cumprod"] = ddpm.alphas_cumprod
        out["ddpm_noisy"] = ddpm.add_noise(x0, noise, t)
        if pred == "v_prediction":
            out["ddpm_v"] = ddpm.get_velocity(x0, noise, t)
    flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    out["flow_sigmas"] = flow.sigmas[:-1] if len(flow.sigmas) > 1000 else flow.sigmas
    out["flow_unshifted"] = torch.linspace(1, 1000, 1000).flip(0) / 1000
    idx = torch.tensor([0, 500, 999])
    sig = flow.sigmas[idx]
    out["flow_sigma_picks"] = sig
    out["flow_noisy"] = flow.scale_noise(x0, flow.timesteps[idx], noise)
    save_file(f32(out), case / "schedules.safetensors")
    print("schedules: DDPM and flow references")


# ----------------------------------------------------------------------------------------------
# The whole CTCal loss on the tiny SD 2 UNet fixture, recomputed here in float64
# ----------------------------------------------------------------------------------------------

def level_of(name, levels):
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    return levels - 1 - int(parts[1])


def ctcal_reference(unet, ae, x0, noise, ctx, t_stu, t_tea, nouns, cfg):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="v_prediction")
    levels = len(unet.config.block_out_channels)
    H, W = x0.shape[-2:]
    grid = (H // cfg["map_downscale"], W // cfg["map_downscale"])

    def noun_maps(t):
        store = capture_cross_maps(unet)
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t.double(), encoder_hidden_states=ctx).sample
        layers = []
        for name, probs in store.items():
            d = 2 ** level_of(name, levels)
            if d not in cfg["layer_downscales"]:
                continue
            b, heads, q, k = probs.shape
            m = probs.double().mean(1).transpose(1, 2).reshape(b, k, H // d, W // d)
            layers.append(resize(m, grid))
        tok = torch.stack(layers).mean(0)  # [b, k, gh, gw]
        per_sample = []
        for bi, groups in enumerate(nouns):
            if not groups:
                per_sample.append(None)
                continue
            per_sample.append(torch.stack([tok[bi, g].sum(0) for g in groups]))
        return pred, per_sample

    with torch.no_grad():
        _, teacher = noun_maps(t_tea)
        pred, student = noun_maps(t_stu)
    target = sched.get_velocity(x0, noise, t_stu)
    diffusion = ((pred - target) ** 2).reshape(x0.shape[0], -1).mean(1).mean()

    return ctcal_parts(student, teacher, [t.item() / 1000.0 for t in t_stu], diffusion, ae, cfg)


def make_ctcal_case() -> None:
    case = fresh_dir(FIX / "ctcal_sd2")
    unet = UNet2DConditionModel.from_pretrained(FIX / "unet_sd2" / "unet").to(torch.float64)
    unet.eval()
    torch.manual_seed(11)
    ae = MapAutoEncoder()
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, case / "autoencoder.safetensors")
    ae = ae.double()
    g = torch.Generator().manual_seed(12)
    x0 = torch.randn((2, 4, 16, 12), generator=g)
    noise = torch.randn((2, 4, 16, 12), generator=g)
    ctx = torch.randn((2, 7, 12), generator=g)
    t_stu = torch.tensor([700, 300])
    t_tea = torch.tensor([0, 0])
    nouns = [[[1], [2, 3]], [[5]]]
    cfg = {"lambda": 1.0, "pixel": 1.0, "semantic": 1.0, "recon": 1.0, "balance": 0.1,
           "tau": 0.05, "map_downscale": 2, "layer_downscales": [1, 2]}
    save_file_ordered(f32({"latents": x0, "noise": noise, "encoder_hidden_states": ctx,
                           "student": t_stu.float(), "teacher": t_tea.float()}),
                      case / "inputs.safetensors",
                      metadata={"nouns": json.dumps(nouns), "config": json.dumps(cfg)})
    with torch.no_grad():
        ref = ctcal_reference(unet, ae, x0.double(), noise.double(), ctx.double(), t_stu, t_tea,
                              nouns, cfg)
    (case / "expected.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(f"ctcal_sd2: {ref}")


# ----------------------------------------------------------------------------------------------
# Full-size key manifests (meta device: no memory, no weights)
# ----------------------------------------------------------------------------------------------

SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    attention_head_dim=[5, 10, 20, 20],
    cross_attention_dim=1024,
    norm_num_groups=32,
    norm_eps=1e-5,
    use_linear_projection=True,
    upcast_attention=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    center_input_sample=False,
    dual_cross_attention=False,
)

SD15_UNET = dict(SD21_UNET, sample_size=64, attention_head_dim=8, cross_attention_dim=768,
                 use_linear_projection=False, upcast_attention=False)


def make_manifests() -> None:
    with torch.device("meta"):
        write_manifest("sd21_unet", UNet2DConditionModel(**SD21_UNET), SD21_UNET)
        write_manifest("sd15_unet", UNet2DConditionModel(**SD15_UNET), SD15_UNET)


# ----------------------------------------------------------------------------------------------
# Full-size random checkpoint (not committed): for the ignored full-size loading test
# ----------------------------------------------------------------------------------------------

def make_full_size(dest: Path) -> None:
    """A random full-size SD 2.1 UNet in diffusers layout, with one reference forward (f32,
    32x32 latents, 77 tokens) for the ignored full-size test. About 3.5 GB; not committed."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET)
    unet.eval()
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "sample": torch.randn((1, 4, 32, 32), generator=g),
        "timestep": torch.tensor([321.0]),
        "encoder_hidden_states": torch.randn((1, 77, 1024), generator=g),
    }
    save_file(f32(inputs), dest / "inputs.safetensors")
    with torch.no_grad():
        out = unet(inputs["sample"], inputs["timestep"],
                   encoder_hidden_states=inputs["encoder_hidden_states"]).sample
    save_file(f32({"out": out}), dest / "outputs.safetensors")
    print(f"full-size SD 2.1 UNet written to {dest / 'unet'}")


# ----------------------------------------------------------------------------------------------
# The tiny embedded model of weights/ (random weights, SD 2.1 layout at small width)
# ----------------------------------------------------------------------------------------------

TINY_SD21 = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64, 64],
    layers_per_block=1,
    attention_head_dim=[2, 4, 4],
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
    upcast_attention=True,
    flip_sin_to_cos=True,
    freq_shift=0,
)


def make_embedded() -> None:
    torch.manual_seed(7)
    unet = UNet2DConditionModel(**TINY_SD21)
    randomize(unet, 8)
    dest = ROOT / "weights" / "tiny-sd21"
    if (dest / "unet").exists():
        shutil.rmtree(dest / "unet")
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    # A caption-like input: one pseudo-embedding per word (seeded by the word), padded to 8.
    words = EXAMPLE_WORDS
    ctx = example_context()
    g = torch.Generator().manual_seed(9)
    inputs = {
        "sample": torch.randn((1, 4, 32, 32), generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": ctx,
    }
    save_file(f32(inputs), dest / "example_inputs.safetensors",
              metadata={"tokens": json.dumps(words)})
    print(f"embedded tiny SD 2.1 UNet: {sum(p.numel() for p in unet.parameters())} params")


def make_unet_part() -> None:
    for name, spec in UNET_CASES.items():
        make_unet_case(name, spec)
    make_schedules()
    make_ctcal_case()
    make_manifests()
    make_embedded()


# The parts in the order the plain command runs them (`--only NAME` runs one): later parts read
# what earlier ones wrote (lora reads unet_sd2/mmdit_sd3, pipeline reads the tiny denoisers and
# tokenizers under weights/).
PARTS = {
    "unet": make_unet_part,
    "sd3": fixtures_sd3.make_all,
    "lora": fixtures_lora.make_all,
    "vae": fixtures_vae.make_all,
    "tok": fixtures_text_tok.make_all,
    "text": fixtures_text_enc.make_all,
    "sched": fixtures_samplers.make_all,
    "pipeline": fixtures_pipeline.make_all,
}


def main(argv):
    if "--full-size" in argv:
        i = argv.index("--full-size")
        make_full_size(Path(argv[i + 1]))
        return
    if "--full-size-pipeline" in argv:
        i = argv.index("--full-size-pipeline")
        fixtures_pipeline.make_full_size_pipeline(Path(argv[i + 1]), SD21_UNET)
        return
    if "--full-size-sd3" in argv:
        i = argv.index("--full-size-sd3")
        fixtures_sd3.make_full_size_sd3(Path(argv[i + 1]))
        return
    only = None
    if "--only" in argv:
        only = argv[argv.index("--only") + 1]
        if only not in PARTS:
            sys.exit(f"--only takes one of {', '.join(PARTS)}, not {only!r}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, make in PARTS.items():
        if only in (None, name):
            make()


if __name__ == "__main__":
    main(sys.argv[1:])
