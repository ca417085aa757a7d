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

from fixture_common import FIX, f32, fresh_dir, save_file_ordered
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
    # What ctcal's export_peft writes as __metadata__ (alpha == rank: the scale is baked in).
    save_file_ordered(f32(weights), dest / name, metadata={
        "format": "pt",
        "ctcal.lora.rank": str(rank),
        "ctcal.lora.alpha": str(rank),
        "ctcal.lora.note": "lora_B holds (alpha / rank) * B: load with lora_alpha = r, "
                           "diffusers' default",
    })

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


def make_all() -> None:
    dest = fresh_dir(FIX / "lora")
    for case, spec in LORA_CASES.items():
        make_lora_case(case, spec, dest)
