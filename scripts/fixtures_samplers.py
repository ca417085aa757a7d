"""Inference sampler fixtures (called by make_fixtures.py; alone: `make_fixtures.py --only sched`).

Runs diffusers' own DDIMScheduler and FlowMatchEulerDiscreteScheduler and writes
tests/fixtures/samplers/samplers.safetensors (float64 computations stored as f32):
  x_init                     [1, 4, 4, 4] start sample (seeded Gaussian)
  model_noise                [10, 1, 4, 4, 4] the fake model's per-step term r_i
  ddim_<pred>_<spacing>_<n>_timesteps   set_timesteps(n) for pred in (epsilon, v_prediction),
                             spacing in (leading, trailing), n in (10, 20, 50); SD 2.1's config
                             (scaled_linear 0.00085..0.012, set_alpha_to_one False,
                             steps_offset 1, clip_sample False)
  ddim_<pred>_<spacing>_traj / _x0      [10, 1, 4, 4, 4]: prev_sample / pred_original_sample
                             after each of the 10 steps of a whole 10-step trajectory
  ddim_<spacing>_n<n>_timesteps         set_timesteps(n) for every spacing (leading, trailing,
                             linspace) and n in (3, 7, 33, 999): numpy's float steps and rounding
  ddim_zsnr_*                the same for v_prediction, trailing, rescale_betas_zero_snr=True
  ddim_clip_*                epsilon, leading, clip_sample=True (range 1.0)
  flow_s<k>_28_timesteps / _sigmas      FlowMatchEulerDiscreteScheduler(shift=k), k in (1, 3),
                             set_timesteps(28): 28 timesteps, 29 sigmas
  flow_s<k>_traj             [10, 1, 4, 4, 4] the samples along a 10-step trajectory
  cfg_uncond, cfg_cond       [2, 4, 4, 4]; cfg_guided: uncond + 7.5 (cond - uncond);
  cfg_rescaled               diffusers' rescale_noise_cfg(guided, cond, guidance_rescale=0.7)

The fake model at step i is `0.5 * x_i + 0.5 * r_i`: it depends on the sample, so errors in a
step feed into the next, and is cheap to recompute on the Rust side.
"""

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from safetensors.torch import save_file

from fixture_common import FIX, f32, fresh_dir

SD21 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1,
            clip_sample=False)
TRAJ_STEPS = 10


def fake_model(x, r):
    return 0.5 * x + 0.5 * r


def ddim_trajectory(sched, x, noise):
    sched.set_timesteps(TRAJ_STEPS)
    xs, x0s = [], []
    for i, t in enumerate(sched.timesteps):
        out = sched.step(fake_model(x, noise[i]), int(t), x)
        x = out.prev_sample
        xs.append(x)
        x0s.append(out.pred_original_sample)
    return torch.stack(xs), torch.stack(x0s)


def flow_trajectory(sched, x, noise):
    sched.set_timesteps(TRAJ_STEPS)
    xs = []
    for i, t in enumerate(sched.timesteps):
        x = sched.step(fake_model(x, noise[i]), t, x).prev_sample
        xs.append(x)
    return torch.stack(xs)


def make_all() -> None:
    case = fresh_dir(FIX / "samplers")
    g = torch.Generator().manual_seed(61)
    x_init = torch.randn((1, 4, 4, 4), generator=g, dtype=torch.float64)
    noise = torch.randn((TRAJ_STEPS, 1, 4, 4, 4), generator=g, dtype=torch.float64)
    out = {"x_init": x_init, "model_noise": noise}
    for pred in ["epsilon", "v_prediction"]:
        for spacing in ["leading", "trailing"]:
            sched = DDIMScheduler(**SD21, prediction_type=pred, timestep_spacing=spacing)
            key = f"ddim_{pred}_{spacing}"
            for n in [10, 20, 50]:
                sched.set_timesteps(n)
                out[f"{key}_{n}_timesteps"] = sched.timesteps.double()
            out[f"{key}_traj"], out[f"{key}_x0"] = ddim_trajectory(sched, x_init, noise)
    for spacing in ["leading", "trailing", "linspace"]:
        sched = DDIMScheduler(**SD21, timestep_spacing=spacing)
        for n in [3, 7, 33, 999]:
            sched.set_timesteps(n)
            out[f"ddim_{spacing}_n{n}_timesteps"] = sched.timesteps.double()
    extra = {
        "ddim_zsnr": dict(SD21, prediction_type="v_prediction", timestep_spacing="trailing",
                          rescale_betas_zero_snr=True),
        "ddim_clip": dict(SD21, prediction_type="epsilon", clip_sample=True),
    }
    for key, cfg in extra.items():
        sched = DDIMScheduler(**cfg)
        out[f"{key}_traj"], out[f"{key}_x0"] = ddim_trajectory(sched, x_init, noise)
    for shift in [1, 3]:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(shift))
        sched.set_timesteps(28)
        out[f"flow_s{shift}_28_timesteps"] = sched.timesteps
        out[f"flow_s{shift}_28_sigmas"] = sched.sigmas
        out[f"flow_s{shift}_traj"] = flow_trajectory(sched, x_init, noise)
    uncond = torch.randn((2, 4, 4, 4), generator=g, dtype=torch.float64)
    cond = uncond + 0.3 * torch.randn((2, 4, 4, 4), generator=g, dtype=torch.float64)
    cond[1] *= 2.0  # a different std per sample
    guided = uncond + 7.5 * (cond - uncond)
    out.update(cfg_uncond=uncond, cfg_cond=cond, cfg_guided=guided,
               cfg_rescaled=rescale_noise_cfg(guided, cond, guidance_rescale=0.7))
    save_file(f32(out), case / "samplers.safetensors")
    print(f"samplers: {len(out)} tensors")


if __name__ == "__main__":
    make_all()
