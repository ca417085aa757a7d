"""The tiny embedded pipelines weights/tiny-sd21 and weights/tiny-sd3, and end-to-end
generation references (tests/fixtures/pipeline_sd21, pipeline_sd3), written by diffusers.

Each tiny pipeline is diffusers' own `StableDiffusionPipeline` / `StableDiffusion3Pipeline`
saved with `save_pretrained` (model_index.json + one folder per component), around the tiny
denoiser already in weights/ (scripts/make_fixtures.py, scripts/fixtures_sd3.py) and the tiny
trained tokenizers (scripts/fixtures_text_tok.py): random tiny CLIP text models (and T5 for
SD 3) and a random tiny AutoencoderKL that halves the resolution (64x64 images, 32x32 latents).

The references run the whole pipeline in float64 for a few steps from given initial latents,
with classifier-free guidance: prompt embeddings, the final latents and the decoded image.

Run through `bash scripts/make_fixtures.sh --only pipeline` (after the tok part).
"""

import json
import shutil
import time

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import (AutoTokenizer, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel)

from fixture_common import FIX, ROOT, f32, fresh_dir, randomize, save_file_ordered

PROMPTS = ["a red circle to the left of a blue square", "two yellow triangles"]
NEGATIVE = ["", "blurry"]
STEPS = 3


def tiny_clip(tokenizer, hidden, projection, seed, act="gelu"):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        projection_dim=projection or hidden, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, hidden_act=act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    randomize(model, seed + 1)
    return model.eval()


def tiny_vae(seed, **extra):
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, sample_size=64,
        **extra)
    randomize(vae, seed + 1)
    return vae.eval()


def run_reference(pipe, name, latents, **call):
    """Runs `pipe` in float64 and writes inputs and outputs under tests/fixtures/<name>."""
    pipe = pipe.to(torch.float64)
    with torch.no_grad():
        out = pipe(prompt=PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                   latents=latents.double(), output_type="latent", **call).images
        image = pipe(prompt=PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                     latents=latents.double(), output_type="pt", **call).images
    dest = fresh_dir(FIX / name)
    save_file_ordered(f32({"latents": latents}), dest / "inputs.safetensors",
                      {"prompts": json.dumps(PROMPTS), "negative": json.dumps(NEGATIVE),
                       "steps": str(STEPS), "call": json.dumps(call)})
    save_file_ordered(f32({"latents": out, "image": image}), dest / "outputs.safetensors", {})
    print(f"{name}: latents {tuple(out.shape)}, image {tuple(image.shape)}")


# The tokenizer folders as scripts/fixtures_text_tok.py writes them (the layouts the published
# pipelines ship); `save_pretrained` would rewrite them in transformers 5's own layout.
TOKENIZERS = {"tiny-sd21": [("clip_sd21", "tokenizer")],
              "tiny-sd3": [("clip_sd3", "tokenizer"), ("clip_sd3_2", "tokenizer_2"),
                           ("t5", "tokenizer_3")]}


def save_pipeline(pipe, name):
    dest = ROOT / "weights" / name
    pipe.save_pretrained(dest, safe_serialization=True)
    # Components loaded with from_pretrained remember where from: an absolute path, which
    # would differ between checkouts.
    for path in dest.glob("*/config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for src, folder in TOKENIZERS[name]:
        shutil.rmtree(dest / folder)
        shutil.copytree(FIX / "tokenizers" / src, dest / folder)


def make_sd21():
    dest = ROOT / "weights" / "tiny-sd21"
    tokenizer = CLIPTokenizer.from_pretrained(dest / "tokenizer")
    unet = UNet2DConditionModel.from_pretrained(dest / "unet")
    text_encoder = tiny_clip(tokenizer, unet.config.cross_attention_dim, 0, 31)
    vae = tiny_vae(33, scaling_factor=0.18215)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    save_pipeline(pipe, "tiny-sd21")
    g = torch.Generator().manual_seed(35)
    latents = torch.randn((len(PROMPTS), 4, 32, 32), generator=g)
    run_reference(pipe, "pipeline_sd21", latents, guidance_scale=7.5)


def make_sd3():
    dest = ROOT / "weights" / "tiny-sd3"
    transformer = SD3Transformer2DModel.from_pretrained(dest / "transformer")
    tokenizer = CLIPTokenizer.from_pretrained(dest / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(dest / "tokenizer_2")
    tokenizer_3 = AutoTokenizer.from_pretrained(dest / "tokenizer_3")
    width = transformer.config.joint_attention_dim
    pooled = transformer.config.pooled_projection_dim
    text_encoder = tiny_clip(tokenizer, width // 2, pooled // 2, 41, act="quick_gelu")
    text_encoder_2 = tiny_clip(tokenizer_2, width // 2, pooled - pooled // 2, 43)
    torch.manual_seed(45)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=tokenizer_3.pad_token_id, eos_token_id=tokenizer_3.eos_token_id)).eval()
    randomize(text_encoder_3, 46, lambda n: "layer_norm" in n and n.endswith("weight"))
    vae = tiny_vae(47, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                   use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    save_pipeline(pipe, "tiny-sd3")
    g = torch.Generator().manual_seed(49)
    latents = torch.randn((len(PROMPTS), 4, 32, 32), generator=g)
    run_reference(pipe, "pipeline_sd3", latents, guidance_scale=7.0, max_sequence_length=16)


def make_all():
    torch.set_num_threads(2)
    make_sd21()
    make_sd3()


# ----------------------------------------------------------------------------------------------
# Full-size random SD 2.1 pipeline (not committed): for the ignored full-size generation test
# ----------------------------------------------------------------------------------------------

FULL_PROMPT = "a red circle to the left of a blue square"
FULL_STEPS = 2
FULL_GUIDANCE = 7.5
FULL_SIZE = 512  # pixels: 64x64 latents


def sd21_text_encoder():
    """`stabilityai/stable-diffusion-2-1`'s text_encoder config (as `ClipTextConfig::sd21()`
    in src/text/clip/config.rs mirrors it), default random init."""
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512,
        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(config).eval()


def sd21_vae():
    """SD 2.1's vae config (as `AutoencoderKLConfig::sd21()` in src/vae/config.rs)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
        act_fn="silu", sample_size=768, scaling_factor=0.18215).eval()


def make_full_size_pipeline(dest, unet_config):
    """A random full-size SD 2.1 pipeline (about 1.3 B parameters, 5.2 GB f32) in diffusers'
    save_pretrained layout under `dest` (UNet from `unet_config`, make_fixtures.py's
    SD21_UNET), and diffusers' own float32 generation from seeded 64x64 latents
    (`dest/reference.safetensors`). Not committed."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    start = time.time()
    unet = UNet2DConditionModel(**unet_config).eval()
    text_encoder = sd21_text_encoder()
    vae = sd21_vae()
    tokenizer = CLIPTokenizer.from_pretrained(FIX / "tokenizers" / "clip_sd21")
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(dest, safe_serialization=True)
    shutil.rmtree(dest / "tokenizer")
    shutil.copytree(FIX / "tokenizers" / "clip_sd21", dest / "tokenizer")
    params = sum(p.numel() for m in (unet, text_encoder, vae) for p in m.parameters())
    print(f"full-size SD 2.1 pipeline ({params / 1e9:.3f} B parameters) written to {dest} "
          f"in {time.time() - start:.0f} s")

    g = torch.Generator().manual_seed(1)
    latents = torch.randn((1, 4, FULL_SIZE // 8, FULL_SIZE // 8), generator=g)
    final = {}

    def keep(pipe, step, t, kwargs):
        final["latents"] = kwargs["latents"].clone()
        return kwargs

    start = time.time()
    with torch.no_grad():
        image = pipe(prompt=[FULL_PROMPT], num_inference_steps=FULL_STEPS,
                     guidance_scale=FULL_GUIDANCE, height=FULL_SIZE, width=FULL_SIZE,
                     latents=latents, output_type="pt", callback_on_step_end=keep).images
    print(f"diffusers float32 generation ({FULL_STEPS} steps, guidance {FULL_GUIDANCE}, "
          f"{FULL_SIZE}x{FULL_SIZE}) in {time.time() - start:.0f} s")
    save_file_ordered(
        f32({"initial": latents, "latents": final["latents"], "image": image}),
        dest / "reference.safetensors",
        {"prompts": json.dumps([FULL_PROMPT]), "steps": str(FULL_STEPS),
         "guidance_scale": str(FULL_GUIDANCE), "size": str(FULL_SIZE)})
