"""PyTorch baseline for `cargo bench --bench ctcal_step` on the CPU: the same plain diffusion
step (forward, v-prediction MSE, backward; no optimiser) of the embedded tiny UNet's config
(weights/tiny-sd21) and of `UNet2DConditionConfig::tiny()`, at batch 2, 32x32 latents, 77 text
tokens, f32, with the same number of threads. Prints the median of N after one warm-up.

    .venv/bin/python scripts/bench_tiny_torch.py --threads 2 --iters 5
"""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(sample_size=16, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], block_out_channels=[32, 64],
            layers_per_block=1, attention_head_dim=[2, 4], cross_attention_dim=32,
            norm_num_groups=8, use_linear_projection=True, upcast_attention=True)

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--iters", type=int, default=5)
args = p.parse_args()
torch.set_num_threads(args.threads)
sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", prediction_type="v_prediction")
embedded = json.loads((ROOT / "weights/tiny-sd21/unet/config.json").read_text())
for name, config in [("tiny", TINY), ("embedded", embedded)]:
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    x0 = torch.randn(2, 4, 32, 32)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500, 501])

    def step():
        noise = torch.randn_like(x0)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=ctx).sample
        F.mse_loss(pred, sched.get_velocity(x0, noise, t)).backward()
        unet.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{name:>8}: plain step {times[len(times) // 2] * 1e3:.1f} ms "
          f"(torch {torch.__version__}, {args.threads} threads)")
