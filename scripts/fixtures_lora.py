"""LoRA fixtures (called by make_fixtures.py; alone: `make_fixtures.py --only lora`).

For the tiny `unet_sd2` UNet and the tiny `mmdit_sd3` transformer (their committed weights are
read, not rewritten), writes under tests/fixtures/lora/:
  <case>_lora.safetensors     deterministic random LoRA weights on the default target modules
                              (UNet: to_q, to_k, to_v, to_out.0; MMDiT: also add_q_proj,
                              add_k_proj, add_v_proj, to_add_out), rank 2 (UNet) / 3 (MMDiT),
                              in the layout ctcal::lora::export_peft writes: keys
                              `unet.<module>.lora_A.weight` [rank, in] / `.lora_B.weight`
                              [out, rank] (prefix `transformer.` for the MMDiT), f32, the
                              alpha / rank scale baked into lora_B (so diffusers' default
                              lora_alpha = r is right), and the same __metadata__ entries
  <case>_outputs.safetensors  `out`: the fixture's inputs through the diffusers model with that
                              file loaded the way `pipe.load_lora_weights()` loads it, float64

Text-encoder LoRA (`--train-text-encoder`), on the tiny embedded pipelines weights/tiny-sd21
and weights/tiny-sd3 (read, not rewritten):
  <case>_lora.safetensors     one file with the denoiser's adapters (`unet.` / `transformer.`)
                              and the CLIP self-attention adapters (q_proj, k_proj, v_proj,
                              out_proj) under `text_encoder.` (and `text_encoder_2.` for SD 3's
                              CLIP-G), rank 2 / 3, as ctcal's export of UNetWithTextEncoder /
                              SD3WithTextEncoders writes it
  <case>_outputs.safetensors  loaded by the pipeline's own `pipe.load_lora_weights()`, float64:
                              `prompt_embeds` (and `pooled_prompt_embeds`) of PROMPTS from
                              `pipe.encode_prompt` (SD 3: max_sequence_length 32), the fixed
                              `sample` and `timestep`, and `out`, the denoiser's output on them
Checked here: each encoder got PEFT layers of the file's rank with scaling 1, and the LoRA of
each text encoder moves its part of the embeddings by more than 1e-3 (relative).

Loading: a pipeline needs text encoders and a VAE, so this calls the pipelines' own class
methods that `load_lora_weights` runs (diffusers/loaders/lora_pipeline.py):
`StableDiffusionPipeline.lora_state_dict` + `load_lora_into_unet` (which calls
`unet.load_lora_adapter(state_dict, prefix="unet")`), and
`StableDiffusion3Pipeline.lora_state_dict` + `load_lora_into_transformer` (which calls
`transformer.load_lora_adapter(state_dict)`, default prefix "transformer"). Checked here: every
target got a PEFT LoRA layer of the file's rank with scaling 1, the adapter-free output still
equals the committed outputs.safetensors, and the LoRA changes the output by more than 1e-3
(relative), so the Rust parity test cannot pass vacuously.
"""

import torch
from safetensors.torch import load_file, save_file
from diffusers import (SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from peft.tuners.tuners_utils import BaseTunerLayer

from fixture_common import FIX, ROOT, f32, fresh_dir, save_file_ordered
from fixtures_sd3 import mmdit_forward

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
MMDIT_TARGETS = UNET_TARGETS + ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

LORA_CASES = {
    "unet_sd2": dict(cls=UNet2DConditionModel, folder="unet", prefix="unet", rank=2, seed=51,
                     targets=UNET_TARGETS),
    "mmdit_sd3": dict(cls=SD3Transformer2DModel, folder="transformer", prefix="transformer",
                      rank=3, seed=52, targets=MMDIT_TARGETS),
}


def pattern_matches(pattern: str, path: str) -> bool:
    """ctcal::lora::pattern_matches: `pattern` matches the end of `path` segment by segment,
    `*` standing for any one segment (PEFT's `target_modules` suffix rule)."""
    p, s = pattern.split("."), path.split(".")
    return len(p) <= len(s) and all(a in ("*", b) for a, b in zip(reversed(p), reversed(s)))


def lora_weights(model, spec) -> dict:
    """Nonzero A [rank, in] and B [out, rank] for every targeted Linear, keys with prefix."""
    g = torch.Generator().manual_seed(spec["seed"])
    rank, prefix = spec["rank"], spec["prefix"]
    out = {}
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Linear)
                and any(pattern_matches(t, name) for t in spec["targets"])):
            continue
        a = torch.randn((rank, module.in_features), generator=g) / module.in_features ** 0.5
        b = 0.3 * torch.randn((module.out_features, rank), generator=g) / rank ** 0.5
        out[f"{prefix}.{name}.lora_A.weight"] = a
        out[f"{prefix}.{name}.lora_B.weight"] = b
    return out


def save_lora(weights: dict, path, rank: int) -> None:
    """The file as ctcal's export_peft writes it: f32 tensors and its __metadata__ (alpha ==
    rank: the scale is baked into lora_B)."""
    save_file_ordered(f32(weights), path, metadata={
        "format": "pt",
        "ctcal.lora.rank": str(rank),
        "ctcal.lora.alpha": str(rank),
        "ctcal.lora.note": "lora_B holds (alpha / rank) * B: load with lora_alpha = r, "
                           "diffusers' default",
    })


def load_like_pipeline(case: str, spec: dict, model, folder, name: str) -> None:
    if spec["cls"] is UNet2DConditionModel:
        state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
            str(folder), weight_name=name, return_lora_metadata=True)
        assert alphas is None and metadata is None
        assert all("lora" in k for k in state_dict)  # load_lora_weights' format check
        StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=model,
                                                    metadata=metadata, adapter_name="ctcal")
    else:
        state_dict, metadata = StableDiffusion3Pipeline.lora_state_dict(
            str(folder), weight_name=name, return_lora_metadata=True)
        assert metadata is None
        assert all("lora" in k for k in state_dict)
        StableDiffusion3Pipeline.load_lora_into_transformer(state_dict, transformer=model,
                                                           metadata=metadata,
                                                           adapter_name="ctcal")


def forward(case: str, model, inputs: dict):
    with torch.no_grad():
        if case.startswith("unet"):
            return model(inputs["sample"].double(), inputs["timestep"].double(),
                         encoder_hidden_states=inputs["encoder_hidden_states"].double()).sample
        return mmdit_forward(model, inputs)


def make_lora_case(case: str, spec: dict, dest) -> None:
    model = spec["cls"].from_pretrained(FIX / case / spec["folder"])
    model.eval()
    weights = lora_weights(model, spec)
    rank = spec["rank"]
    name = f"{case}_lora.safetensors"
    save_lora(weights, dest / name, rank)

    load_like_pipeline(case, spec, model, dest, name)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == len(weights) // 2, (len(layers), len(weights))
    for n, m in layers:
        assert m.r["ctcal"] == rank and m.scaling["ctcal"] == 1.0, (n, m.r, m.scaling)
    model = model.to(torch.float64)

    inputs = load_file(FIX / case / "inputs.safetensors")
    out = forward(case, model, inputs)
    model.disable_lora()
    base = forward(case, model, inputs)
    model.enable_lora()
    committed = load_file(FIX / case / "outputs.safetensors")["out"].double()
    scale = committed.abs().max()
    assert ((base - committed).abs().max() / scale).item() < 1e-6, "base output drifted"
    change = ((out - base).abs().max() / scale).item()
    assert change > 1e-3, f"{case}: the LoRA changes the output only by {change}"
    save_file(f32({"out": out}), dest / f"{case}_outputs.safetensors")
    print(f"lora {case}: {len(layers)} adapters of rank {rank}, relative change {change:.3f}")


CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PROMPTS = ["a red circle to the left of a blue square", "two yellow triangles"]
T5_TOKENS = 32

TEXT_CASES = {
    "sd21_text": dict(pipeline="tiny-sd21", rank=2, seed=53,
                      parts=[("unet", UNET_TARGETS), ("text_encoder", CLIP_TARGETS)]),
    "sd3_text": dict(pipeline="tiny-sd3", rank=3, seed=54,
                     parts=[("transformer", MMDIT_TARGETS), ("text_encoder", CLIP_TARGETS),
                            ("text_encoder_2", CLIP_TARGETS)]),
}


def encode(pipe, sd3: bool):
    """`encode_prompt` without guidance: (prompt_embeds, pooled or None)."""
    with torch.no_grad():
        if sd3:
            out = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, prompt_3=None,
                                     do_classifier_free_guidance=False,
                                     max_sequence_length=T5_TOKENS)
            return out[0], out[2]
        return pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0], None


def make_text_case(case: str, spec: dict, dest) -> None:
    sd3 = spec["pipeline"] == "tiny-sd3"
    cls = StableDiffusion3Pipeline if sd3 else StableDiffusionPipeline
    pipe = cls.from_pretrained(ROOT / "weights" / spec["pipeline"])
    weights = {}
    for i, (part, targets) in enumerate(spec["parts"]):
        part_spec = dict(seed=spec["seed"] + 100 * i, rank=spec["rank"], prefix=part,
                         targets=targets)
        module = getattr(pipe, part)
        part_weights = lora_weights(module, part_spec)
        if part.startswith("text_encoder") and not hasattr(module, "text_model"):
            # transformers 5 flattened CLIPTextModel (no `text_model.`); LoRA files keep the
            # classic `text_encoder.text_model.` keys, which every diffusers reads (0.42
            # strips the segment for a flat model: `_load_lora_into_text_encoder`).
            cut = len(part) + 1
            part_weights = {f"{part}.text_model.{k[cut:]}": v for k, v in part_weights.items()}
        weights.update(part_weights)
    rank = spec["rank"]
    name = f"{case}_lora.safetensors"
    save_lora(weights, dest / name, rank)
    pipe = pipe.to(torch.float64)
    base, _ = encode(pipe, sd3)
    pipe.load_lora_weights(str(dest), weight_name=name, adapter_name="ctcal")
    for part, _ in spec["parts"]:
        layers = [m for m in getattr(pipe, part).modules() if isinstance(m, BaseTunerLayer)]
        n = sum(1 for k in weights if k.startswith(part + ".")) // 2
        assert len(layers) == n and n > 0, (part, len(layers), n)
        for m in layers:
            assert m.r["ctcal"] == rank and m.scaling["ctcal"] == 1.0, (part, m.r, m.scaling)
    embeds, pooled = encode(pipe, sd3)
    # Each text encoder's adapters move its part of the embeddings (CLIP-L, then CLIP-G
    # features of the first 77 tokens in SD 3).
    widths = ([pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size]
              if sd3 else [embeds.shape[-1]])
    start = 0
    for w in widths:
        part, was = embeds[:, :77, start:start + w], base[:, :77, start:start + w]
        change = ((part - was).abs().max() / was.abs().max()).item()
        assert change > 1e-3, f"{case}: a text encoder's LoRA changes its part only by {change}"
        start += w
    g = torch.Generator().manual_seed(spec["seed"] + 7)
    denoiser = pipe.transformer if sd3 else pipe.unet
    channels = denoiser.config.in_channels
    size = denoiser.config.sample_size
    sample = torch.randn((len(PROMPTS), channels, size, size), generator=g, dtype=torch.float64)
    timestep = torch.tensor([700.0, 90.0], dtype=torch.float64)
    with torch.no_grad():
        if sd3:
            out = denoiser(hidden_states=sample, encoder_hidden_states=embeds,
                           pooled_projections=pooled, timestep=timestep).sample
        else:
            out = denoiser(sample, timestep, encoder_hidden_states=embeds).sample
    tensors = {"prompt_embeds": embeds, "sample": sample, "timestep": timestep, "out": out}
    if pooled is not None:
        tensors["pooled_prompt_embeds"] = pooled
    save_file(f32(tensors), dest / f"{case}_outputs.safetensors")
    print(f"lora {case}: {len(weights) // 2} adapters of rank {rank}")


def make_all() -> None:
    dest = fresh_dir(FIX / "lora")
    for case, spec in LORA_CASES.items():
        make_lora_case(case, spec, dest)
    for case, spec in TEXT_CASES.items():
        make_text_case(case, spec, dest)
