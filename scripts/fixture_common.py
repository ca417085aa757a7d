"""Helpers shared by the fixture generators (scripts/make_fixtures.py, scripts/fixtures_sd3.py).

Paths, parameter randomisation, safetensors helpers, the CTCal map autoencoder mirror, the map
resize of the CTCal references, the key-manifest writer and a safetensors writer with a
reproducible metadata order.
"""

import json
import shutil
import struct
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def randomize(model: torch.nn.Module, seed: int, is_norm_weight=None) -> None:
    """Moves every parameter off its default so swapped or mis-mapped tensors show up.

    Norm weights default to one and biases to zero: a loader that swaps weight and bias, or
    forgets a bias, would still pass against defaults.

    `is_norm_weight(name)` says which parameters are norm scales (set to 1 + noise); by default
    every weight whose name contains "norm" (right for the UNet, where only norm layers have
    "norm" in their names; the MMDiT passes a test on the owning module's type instead, since its
    adaptive norms `norm1.linear` etc. are plain linear layers).
    """
    if is_norm_weight is None:
        def is_norm_weight(name):
            return "norm" in name and name.endswith("weight")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if is_norm_weight(name):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.02 * noise)


def f32(d: dict) -> dict:
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class MapAutoEncoder(torch.nn.Module):
    """Mirror of ctcal::ctcal::MapAutoEncoder (same parameter names)."""

    def __init__(self, hidden=16, latent=32):
        super().__init__()
        self.enc1 = torch.nn.Conv2d(1, hidden, 3, stride=2, padding=1)
        self.enc2 = torch.nn.Conv2d(hidden, latent, 3, stride=2, padding=1)
        self.dec1 = torch.nn.Conv2d(latent, hidden, 3, padding=1)
        self.dec2 = torch.nn.Conv2d(hidden, 1, 3, padding=1)

    def encode(self, x):
        return self.enc2(F.silu(self.enc1(x)))

    def decode(self, z):
        x = F.silu(self.dec1(F.interpolate(z, scale_factor=2, mode="nearest")))
        return self.dec2(F.interpolate(x, scale_factor=2, mode="nearest"))


def resize(maps, grid):
    h, w = maps.shape[-2:]
    if (h, w) == tuple(grid):
        return maps
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(maps, grid)
    assert h <= grid[0] and w <= grid[1]
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)


def write_manifest(name: str, model: torch.nn.Module, config) -> None:
    """Sorted `key [shape]` lines of the state dict (buffers included) and the config: a dict
    (written as json) or a ready string (e.g. `model.to_json_string()`, what save_pretrained
    writes as config.json)."""
    out = FIX / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} {list(v.shape)}" for k, v in sorted(model.state_dict().items())]
    (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
    text = config if isinstance(config, str) else json.dumps(config, indent=2) + "\n"
    (out / f"{name}.config.json").write_text(text)
    print(f"manifest {name}: {len(lines)} keys")


def save_file_ordered(tensors: dict, path: Path, metadata: dict) -> None:
    """`safetensors.torch.save_file` with the header's `__metadata__` entries in the order given.

    safetensors writes metadata from a hash map, so with two or more entries their order, and
    the file's bytes, change from run to run. This rewrites the header (same compact JSON, same
    length and padding) with the entries in `metadata`'s order; tensors and data are untouched.
    """
    blob = safetensors.torch.save(tensors, metadata=metadata)
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    assert header["__metadata__"] == metadata
    header = {"__metadata__": dict(metadata), **{k: v for k, v in header.items()
                                                 if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= n
    text += b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(blob[:8] + text + blob[8 + n:])


def ctcal_parts(student, teacher, weights, diffusion, ae, cfg):
    """The CTCal loss of a batch from per-sample noun maps (None for a noun-less sample), the
    per-sample weights w(t), the diffusion loss and the map auto-encoder: the loss dict the
    Rust step must reproduce (ctcal::ctcal::loss)."""

    def norm(m):
        peak = m.reshape(m.shape[0], -1).max(1).values
        return m / (peak + 1e-8)[:, None, None], peak

    total, parts, count = 0.0, [0.0] * 4, 0
    for bi, (s, t) in enumerate(zip(student, teacher)):
        if s is None:
            continue
        sn, speak = norm(s)
        tn, _ = norm(t)
        pixel = ((sn - tn) ** 2).mean()
        s_in = resize(sn[:, None], (16, 16))
        t_in = resize(tn[:, None], (16, 16))
        semantic = ((ae.encode(s_in) - ae.encode(t_in)) ** 2).mean()
        recon = ((ae.decode(ae.encode(t_in)) - t_in) ** 2).mean()
        balance = F.relu(1.0 - cfg["tau"] - speak / (speak.max() + 1e-8)).mean()
        terms = [pixel, semantic, recon, balance]
        lam = [cfg["pixel"], cfg["semantic"], cfg["recon"], cfg["balance"]]
        total = total + weights[bi] * sum(l * x for l, x in zip(lam, terms))
        parts = [p + x.item() for p, x in zip(parts, terms)]
        count += 1
    ctcal = total / len(student)
    parts = [p / count for p in parts]
    return {"diffusion": diffusion.item(), "ctcal": float(ctcal), "pixel": parts[0],
            "semantic": parts[1], "recon": parts[2], "balance": parts[3],
            "total": diffusion.item() + cfg["lambda"] * float(ctcal)}


# The caption of the embedded models' example inputs, start token first.
EXAMPLE_WORDS = ["<start>", "a", "red", "cube", "left", "of", "blue", "ball"]


def word_embedding(word: str, dim: int = 32) -> torch.Tensor:
    """A fixed pseudo text embedding of `word` (seeded by its characters): the stand-in for a text
    encoder in the embedded example inputs and in weights/tiny-data."""
    return torch.randn(dim, generator=torch.Generator().manual_seed(sum(map(ord, word)) * 31 + 1))


def example_context() -> torch.Tensor:
    """`[1, tokens, 32]` pseudo embeddings of EXAMPLE_WORDS."""
    return torch.stack([word_embedding(w) for w in EXAMPLE_WORDS])[None]
