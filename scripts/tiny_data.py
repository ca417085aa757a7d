"""The tiny bundled training set of weights/tiny-data: coloured shapes with captions, as cached
features (the crate has no VAE or text encoder yet).

Each sample is a 32x32 RGB picture of one or two shapes (circle, square, triangle in red, green,
blue or yellow), its caption from a few templates ("a red circle", "a blue square to the left of a
green triangle", "two yellow triangles"), and:
- `latents` [4, 32, 32]: a pixel-space stand-in for VAE latents: R, G, B and grey in [-1, 1];
- `encoder_hidden_states` [12, 32]: a fixed pseudo-embedding per word (seeded by the word, the
  same scheme as weights/*/example_inputs.safetensors), after a start token, padded with an end
  token: a stand-in for a text encoder, deterministic and the same for a word everywhere;
- `pooled_projections` [32]: the mean of the caption's word embeddings;
- `noun_tokens`: the token positions of the shape nouns (start token at 0).
The same pictures, upscaled to 64x64 (nearest), are also written as an image folder,
`images/NNN.png` with `images/metadata.jsonl` (caption and noun words, no token positions):
training from plain images through the tiny pipeline's VAE, tokenizer and text encoder.
Both tiny denoisers (tiny-sd21, tiny-sd3) take these shapes. Seeded: reruns are identical.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from fixture_common import word_embedding

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "weights" / "tiny-data"
SIZE, TOKENS, DIM = 32, 12, 32
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220),
           "yellow": (230, 210, 40)}
SHAPES = ["circle", "square", "triangle"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


def draw(img, shape, colour, cx, cy, r):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    else:  # triangle, apex up
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    img[mask] = COLOURS[colour]


def sample(rng):
    kind = rng.integers(3)
    img = np.full((SIZE, SIZE, 3), 245, dtype=np.uint8)
    c1, c2 = rng.choice(list(COLOURS), 2, replace=False)
    s1, s2 = rng.choice(SHAPES, 2)
    if kind == 0:
        draw(img, s1, c1, rng.integers(10, 22), rng.integers(10, 22), rng.integers(6, 9))
        words = ["a", c1, s1]
        nouns = [s1]
    elif kind == 1:
        draw(img, s1, c1, 8, rng.integers(10, 22), 5)
        draw(img, s2, c2, 24, rng.integers(10, 22), 5)
        words = ["a", c1, s1, "to", "the", "left", "of", "a", c2, s2]
        nouns = [s1, s2]
    else:
        draw(img, s1, c1, 8, 16, 5)
        draw(img, s1, c1, 24, 16, 5)
        words = ["two", c1, PLURAL[s1]]
        nouns = [PLURAL[s1]]
    return img, words, nouns


def main(n=24):
    if DEST.exists():
        shutil.rmtree(DEST)
    (DEST / "features").mkdir(parents=True)
    (DEST / "images").mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    rows = []
    image_rows = []
    for i in range(n):
        img, words, nouns = sample(rng)
        x = torch.from_numpy(img).float().permute(2, 0, 1) / 127.5 - 1.0
        latents = torch.cat([x, x.mean(0, keepdim=True)], 0)
        tokens = ["<start>"] + words + ["<end>"] * (TOKENS - 1 - len(words))
        hidden = torch.stack([word_embedding(w) for w in tokens])
        pooled = torch.stack([word_embedding(w) for w in words]).mean(0)
        name = f"features/{i:03d}.safetensors"
        save_file({"latents": latents.contiguous(), "encoder_hidden_states": hidden.contiguous(),
                   "pooled_projections": pooled.contiguous()}, DEST / name)
        noun_tokens = [[1 + words.index(w)] for w in nouns]
        rows.append({"file_name": name, "text": " ".join(words), "nouns": nouns,
                     "noun_tokens": noun_tokens})
        image_name = f"{i:03d}.png"
        Image.fromarray(img).resize((2 * SIZE, 2 * SIZE), Image.NEAREST).save(
            DEST / "images" / image_name)
        image_rows.append({"file_name": image_name, "text": " ".join(words), "nouns": nouns})
        if i < 4:
            Image.fromarray(img).resize((128, 128), Image.NEAREST).save(DEST / f"preview_{i}.png")
    with open(DEST / "metadata.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(DEST / "images" / "metadata.jsonl", "w") as f:
        for r in image_rows:
            f.write(json.dumps(r) + "\n")
    print(f"tiny-data: {n} samples in {DEST}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
