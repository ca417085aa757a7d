"""PyTorch side of scripts/bench_vs_torch.sh: the same UNet workload as `benches/vs_torch.rs`,
with diffusers' UNet2DConditionModel, peft LoRA and torch.optim.AdamW, in f32 on the CPU, on
the inputs the crate wrote (`vs_torch --write-inputs`).

    .venv/bin/python scripts/bench_torch.py --model shapes-unet|tiny-sd21 \
        --workload forward|plain|ctcal --iters N --read-inputs inputs.safetensors [--threads 2]

Models: weights/shapes-unet (base.safetensors holds burn module paths: the denoiser's keys
under `denoiser.`, attention projections as `...to_q.base.weight`, Linear weights as
[in, out]; mapped here to diffusers' names and layout) and weights/tiny-sd21/unet
(from_pretrained). Workloads:
- forward: the base UNet, no grad, default attention processors;
- plain: peft LoRA (r=4, alpha=4) on to_q, to_k, to_v, to_out.0 with the crate's initial
  adapter values, v-prediction MSE, backward, AdamW (lr 1e-4, weight decay 1e-2, eps 1e-8);
- ctcal: the same plus the CTCal loss: a teacher pass under no_grad (stopped at the last
  captured layer, as the crate stops after that layer's block) and a student pass whose
  selected cross-attention layers (the sites the crate captured, named in the inputs) compute
  an explicit softmax kept on the graph; per-noun maps (heads and layers averaged on the common
  grid, tokens of a noun summed), the four terms with the map auto-encoder (the crate's
  initial weights, its own AdamW), weighted by t / 1000.

Prints `rss_loaded <KiB>` (peak RSS before the first step: libraries, model and inputs
loaded), `time <median s>` after one warm-up iteration, `loss <total> <diffusion> <ctcal>` and
`parts ...` of the first iteration, `loss2 ...` of the second, like the crate.
"""

import argparse
import json
import math
import re
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from fixture_common import ROOT, MapAutoEncoder, ctcal_parts, resize

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def shapes_unet():
    from diffusers import UNet2DConditionModel

    folder = ROOT / "weights" / "shapes-unet"
    config = json.loads((folder / "base_config.json").read_text())["denoiser"]["Unet"]
    unet = UNet2DConditionModel(
        sample_size=config["sample_size"],
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        flip_sin_to_cos=config["flip_sin_to_cos"],
        freq_shift=config["freq_shift"],
        down_block_types=tuple(config["down_block_types"]),
        up_block_types=tuple(config["up_block_types"]),
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=tuple(config["layers_per_block"]),
        transformer_layers_per_block=tuple(config["transformer_layers_per_block"]),
        downsample_padding=config["downsample_padding"],
        mid_block_scale_factor=config["mid_block_scale_factor"],
        norm_num_groups=config["norm_num_groups"],
        norm_eps=config["norm_eps"],
        cross_attention_dim=config["cross_attention_dim"],
        # diffusers' SD configs give head counts under attention_head_dim (its naming issue);
        # the crate's num_attention_heads are those counts.
        attention_head_dim=tuple(config["num_attention_heads"]),
        use_linear_projection=config["use_linear_projection"],
        upcast_attention=config["upcast_attention"],
    )
    state = {}
    for key, value in load_file(folder / "base.safetensors").items():
        if not key.startswith("denoiser."):
            continue
        state[diffusers_key(key[len("denoiser."):])] = value.t() if value.dim() == 2 else value
    unet.load_state_dict(state, strict=True)
    return unet


def diffusers_key(path: str) -> str:
    """A burn module path of the UNet as diffusers' state-dict key (the crate's weights::keys
    rules): LoraLinear's `base` segment dropped, norm gamma/beta as weight/bias, the feed-forward's
    proj_in/proj_out as net.0.proj/net.2."""
    path = re.sub(r"\.(to_q|to_k|to_v|to_out\.0)\.base\.(weight|bias)$", r".\1.\2", path)
    path = re.sub(r"\.gamma$", ".weight", path)
    path = re.sub(r"\.beta$", ".bias", path)
    path = path.replace(".ff.proj_in.", ".ff.net.0.proj.").replace(".ff.proj_out.", ".ff.net.2.")
    return path


def tiny_sd21_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(ROOT / "weights" / "tiny-sd21" / "unet")


class StopPass(Exception):
    """Raised by the last captured layer of a pass that only reads maps (the teacher's)."""


class Capture:
    """diffusers' AttnProcessor with the softmax made explicit, its probabilities kept (on the
    graph unless under no_grad) in `store` as `[batch, heads, queries, keys]`. With `stop` set,
    it raises `StopPass` once its probabilities are stored."""

    def __init__(self, name, store):
        self.name = name
        self.store = store
        self.stop = False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        assert attention_mask is None and attn.group_norm is None and attn.spatial_norm is None
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        self.store.append((self.name, probs.reshape(b, attn.heads, n, -1)))
        if self.stop:
            raise StopPass
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def install_capture(unet, sites):
    """Capture processors on the `sites` (attention module paths, in forward order); the default
    elsewhere. Returns the store and the capture of the last site."""
    store = []
    procs = {}
    found = {}
    for key, proc in unet.attn_processors.items():
        name = key[: -len(".processor")]
        if name in sites:
            procs[key] = found[name] = Capture(name, store)
        else:
            procs[key] = proc
    missing = set(sites) - set(found)
    if missing:
        sys.exit(f"bench_torch: attention sites not in the UNet: {sorted(missing)}")
    unet.set_attn_processor(procs)
    return store, found[sites[-1]]


def noun_maps(store, nouns, hw, grid):
    """One `[nouns, gh, gw]` map per sample (None without nouns), as calibration::maps does."""
    h, w = hw
    layers = []
    for _, probs in store:
        b, _, q, k = probs.shape
        d = round(math.sqrt(h * w / q))
        assert (h // d) * (w // d) == q, f"query grid of {q} on {h}x{w}"
        m = probs.mean(1).transpose(1, 2).reshape(b, k, h // d, w // d)
        layers.append(resize(m, grid))
    tok = torch.stack(layers).mean(0)
    return [torch.stack([tok[i, g].sum(0) for g in groups]) if groups else None
            for i, groups in enumerate(nouns)]


def ctcal_loss(student, teacher, weights, ae, cfg):
    """calibration::loss::ctcal_loss on the graph: `mean_b w_b L_b` and the parts averaged over
    the samples with nouns."""

    def norm(m):
        peak = m.reshape(m.shape[0], -1).max(1).values
        return m / (peak + 1e-8)[:, None, None], peak

    side = cfg["autoencoder"]["input_size"]
    lam = [cfg["pixel_weight"], cfg["semantic_weight"], cfg["recon_weight"],
           cfg["balance_weight"]]
    total = torch.zeros(())
    sums = torch.zeros(4)
    count = 0
    for bi, (s, t) in enumerate(zip(student, teacher)):
        if s is None:
            continue
        sn, speak = norm(s)
        tn, _ = norm(t)
        pixel = ((sn - tn) ** 2).mean()
        s_in = resize(sn[:, None], (side, side))
        t_in = resize(tn[:, None], (side, side))
        t_code = ae.encode(t_in)
        semantic = ((ae.encode(s_in) - t_code) ** 2).mean()
        recon = ((ae.decode(t_code) - t_in) ** 2).mean()
        balance = F.relu(1.0 - cfg["tau"] - speak / (speak.max().detach() + 1e-8)).mean()
        terms = [pixel, semantic, recon, balance]
        sums = sums + torch.stack(terms).detach()
        total = total + weights[bi] * sum(l * x for l, x in zip(lam, terms))
        count += 1
    return total / len(student), (sums / max(count, 1)).tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, choices=["shapes-unet", "tiny-sd21"])
    p.add_argument("--workload", required=True, choices=["forward", "plain", "ctcal"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--read-inputs", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    with safe_open(args.read_inputs, "pt") as f:
        meta = f.metadata()
    for key in ("model", "workload"):
        if meta.get(key) != getattr(args, key):
            sys.exit(f"bench_torch: {args.read_inputs} was written for {key} "
                     f"{meta.get(key)!r}, not {getattr(args, key)!r}")
    inputs = load_file(args.read_inputs)
    cfg = json.loads(meta["ctcal"])
    sites = json.loads(meta["sites"])
    nouns = json.loads(meta["nouns"])
    lr, wd, eps = float(meta["lr"]), float(meta["weight_decay"]), float(meta["epsilon"])
    rank = int(meta["rank"])

    from diffusers import DDPMScheduler

    unet = shapes_unet() if args.model == "shapes-unet" else tiny_sd21_unet()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="v_prediction")
    x0, hidden, noise = inputs["latents"], inputs["hidden"], inputs["noise"]
    t_stu, t_tea = inputs["student"], inputs["teacher"]
    b, _, h, w = x0.shape
    grid = (h // cfg["map_downscale"], w // cfg["map_downscale"])
    print(f"{args.model} {args.workload}: batch {b}, input {list(x0.shape[1:])}, text "
          f"{list(hidden.shape)}, loaded in {time.perf_counter() - t0:.1f} s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)", file=sys.stderr)

    if args.workload == "forward":
        unet.eval()
        noisy = sched.add_noise(x0, noise, t_stu.long())
        target = sched.get_velocity(x0, noise, t_stu.long())

        def step():
            with torch.no_grad():
                pred = unet(noisy, t_stu, encoder_hidden_states=hidden).sample
                mse = ((pred - target) ** 2).mean().item()
            return [mse, mse, 0.0], [0.0] * 4
    else:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                    target_modules=LORA_TARGETS))
        set_adapters(unet, inputs)
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, eps=eps)
        ae_cfg = cfg["autoencoder"]
        ae = MapAutoEncoder(ae_cfg["hidden_channels"], ae_cfg["latent_channels"])
        ae.load_state_dict({k[len("ae."):]: v for k, v in inputs.items()
                            if k.startswith("ae.")}, strict=True)
        opt_ae = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=wd, eps=eps)
        use_ctcal = args.workload == "ctcal" and cfg["lambda_ctcal"] != 0.0
        store, last_site = install_capture(unet, sites) if use_ctcal else (None, None)
        weights = [float(t) / 1000.0 for t in t_stu]
        checked = [False]
        print(f"LoRA: {sum(p.numel() for p in params)} trainable parameters", file=sys.stderr)

        def step():
            opt.zero_grad(set_to_none=True)
            opt_ae.zero_grad(set_to_none=True)
            if use_ctcal:
                store.clear()
                # The teacher pass only reads maps: it stops at the last captured layer (the
                # crate stops at the end of that layer's block, a little later).
                last_site.stop = True
                with torch.no_grad():
                    try:
                        unet(sched.add_noise(x0, noise, t_tea.long()), t_tea,
                             encoder_hidden_states=hidden)
                    except StopPass:
                        pass
                    finally:
                        last_site.stop = False
                    teacher = noun_maps(store, nouns, (h, w), grid)
                store.clear()
            noisy = sched.add_noise(x0, noise, t_stu.long())
            target = sched.get_velocity(x0, noise, t_stu.long())
            pred = unet(noisy, t_stu, encoder_hidden_states=hidden).sample
            diffusion = ((pred - target) ** 2).reshape(b, -1).mean(1).mean()
            parts = [0.0] * 4
            if use_ctcal:
                student = noun_maps(store, nouns, (h, w), grid)
                ctcal, parts = ctcal_loss(student, teacher, weights, ae, cfg)
                loss = diffusion + cfg["lambda_ctcal"] * ctcal
                if not checked[0]:
                    check_reference(student, teacher, weights, diffusion, ae, cfg, ctcal, parts)
                    checked[0] = True
            else:
                ctcal = torch.zeros(())
                loss = diffusion
            loss.backward()
            opt.step()
            if use_ctcal:
                opt_ae.step()
            return [loss.item(), diffusion.item(), ctcal.item()], parts

    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    first, first_parts = step()
    warm = time.perf_counter() - start
    times, second = [], None
    for _ in range(args.iters):
        start = time.perf_counter()
        losses, _ = step()
        times.append(time.perf_counter() - start)
        second = second or losses
    median = sorted(times)[len(times) // 2]
    print(f"rss_loaded {loaded}")
    print(f"warmup {warm:.4f}")
    print("times " + " ".join(f"{t:.4f}" for t in times))
    print(f"time {median:.6f}")
    print("loss " + " ".join(f"{x:.9e}" for x in first))
    print("parts " + " ".join(f"{x:.9e}" for x in first_parts))
    if second is not None:
        print("loss2 " + " ".join(f"{x:.9e}" for x in second))


def set_adapters(unet, inputs):
    """The crate's initial adapter values (PyTorch layout) into peft's `default` adapter."""
    n = 0
    for name, module in unet.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        a, b = inputs.get(f"lora.{name}.lora_A"), inputs.get(f"lora.{name}.lora_B")
        if a is None or b is None:
            sys.exit(f"bench_torch: the inputs have no adapter for {name}")
        with torch.no_grad():
            module.lora_A["default"].weight.copy_(a)
            module.lora_B["default"].weight.copy_(b)
        assert module.scaling["default"] == 1.0
        n += 1
    expected = sum(1 for k in inputs if k.startswith("lora.") and k.endswith(".lora_A"))
    if n != expected:
        sys.exit(f"bench_torch: peft adapted {n} projections, the crate {expected}")


def check_reference(student, teacher, weights, diffusion, ae, cfg, ctcal, parts):
    """The graph version of the loss against scripts/fixture_common.ctcal_parts (the parity
    reference of the crate's tests) on the first step."""
    ref_cfg = {"lambda": cfg["lambda_ctcal"], "pixel": cfg["pixel_weight"],
               "semantic": cfg["semantic_weight"], "recon": cfg["recon_weight"],
               "balance": cfg["balance_weight"], "tau": cfg["tau"]}
    with torch.no_grad():
        ref = ctcal_parts([None if s is None else s.detach() for s in student], teacher,
                          weights, diffusion.detach(), ae, ref_cfg)
    mine = [ctcal.item()] + list(parts)
    theirs = [ref["ctcal"], ref["pixel"], ref["semantic"], ref["recon"], ref["balance"]]
    for x, y in zip(mine, theirs):
        if abs(x - y) > 1e-6 * max(abs(y), 1e-6):
            sys.exit(f"bench_torch: loss {mine} differs from fixture_common.ctcal_parts {theirs}")


if __name__ == "__main__":
    main()
