"""VAE fixtures (diffusers' `AutoencoderKL`), called by make_fixtures.py.

Writes, under tests/fixtures/:
  vae_sd2    tiny random SD 2.1-style VAE (4 latent channels, quant convs, 2 levels of 8 and 12
             channels, 2 resnets per encoder level), save_pretrained layout in vae/, inputs and
             float64 references (the Rust test derives the pre-0.14 attention names from it)
  vae_sd3    tiny random SD 3-style VAE (16 latent channels, no quant convs, shift factor)
  manifests/sd21_vae.*, manifests/sd3_medium_vae.*
             key manifests and config.json of the published VAEs (meta device, no weights)

inputs.safetensors: `image` [b, 3, H, W] in [-1, 1] (non-square) and `latent` [b, c, h, w].
outputs.safetensors: `mean`, `logvar` (posterior of `image`), `decoded` (decode of `latent`),
`round_trip` (decode of the posterior mode of `image`).

Deterministic: fixed seeds. Only this part: `make_fixtures.py --only vae`.
"""

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL

from fixture_common import FIX, f32, fresh_dir, randomize, write_manifest

DOWN = "DownEncoderBlock2D"
UP = "UpDecoderBlock2D"

VAE_CASES = {
    "vae_sd2": dict(
        config=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=[DOWN, DOWN],
            up_block_types=[UP, UP],
            block_out_channels=[8, 12],
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=0.18215,
        ),
        image=(2, 3, 32, 24),
        seed=21,
    ),
    "vae_sd3": dict(
        config=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=[DOWN, DOWN],
            up_block_types=[UP, UP],
            block_out_channels=[8, 16],
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        image=(1, 3, 24, 32),
        seed=3,
    ),
}


def vae_reference(vae, image, latent):
    ref = AutoencoderKL.from_config(vae.config).to(torch.float64)
    ref.load_state_dict({k: v.to(torch.float64) for k, v in vae.state_dict().items()})
    ref.eval()
    with torch.no_grad():
        posterior = ref.encode(image.double()).latent_dist
        decoded = ref.decode(latent.double()).sample
        round_trip = ref.decode(posterior.mode()).sample
    return {"mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded,
            "round_trip": round_trip}


def make_vae_case(name: str, spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    vae = AutoencoderKL(**spec["config"])
    randomize(vae, spec["seed"] + 100)
    vae.eval()
    case = fresh_dir(FIX / name)
    vae.save_pretrained(case / "vae", safe_serialization=True)

    g = torch.Generator().manual_seed(spec["seed"] + 200)
    b, _, h, w = spec["image"]
    image = torch.rand(spec["image"], generator=g) * 2 - 1
    down = 2 ** (len(spec["config"]["block_out_channels"]) - 1)
    latent = torch.randn((b, spec["config"]["latent_channels"], h // down, w // down), generator=g)
    save_file(f32({"image": image, "latent": latent}), case / "inputs.safetensors")
    save_file(f32(vae_reference(vae, image, latent)), case / "outputs.safetensors")
    print(f"{name}: {sum(p.numel() for p in vae.parameters())} params")


# ----------------------------------------------------------------------------------------------
# Full-size key manifests (meta device) and config.json of the published VAEs
# ----------------------------------------------------------------------------------------------

# stabilityai/stable-diffusion-2-1 vae/config.json (as published: diffusers 0.8 wrote only the
# fields it had, so the rest take defaults).
SD21_VAE = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=[DOWN] * 4,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=768,
    up_block_types=[UP] * 4,
)

# stabilityai/stable-diffusion-3-medium-diffusers vae/config.json.
SD3_MEDIUM_VAE = dict(SD21_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305,
                      shift_factor=0.0609, force_upcast=True, use_quant_conv=False,
                      use_post_quant_conv=False)


def make_vae_manifests() -> None:
    with torch.device("meta"):
        write_manifest("sd21_vae", AutoencoderKL(**SD21_VAE),
                       dict(_class_name="AutoencoderKL", _diffusers_version="0.8.0", **SD21_VAE))
        sd3 = AutoencoderKL(**SD3_MEDIUM_VAE)
        # What save_pretrained writes (all fields, `_class_name`, `_diffusers_version`).
        write_manifest("sd3_medium_vae", sd3, sd3.to_json_string())


def make_all() -> None:
    for name, spec in VAE_CASES.items():
        make_vae_case(name, spec)
    make_vae_manifests()
