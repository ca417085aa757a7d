"""Tokenizer fixtures (called by make_fixtures.py; alone: `make_fixtures.py --only tok`).

Real CLIP and T5 vocabularies cannot be downloaded here, so tiny ones are trained on a corpus of
generated captions (fixed seed) and written in the layouts diffusers pipelines load:

  clip_sd21/   vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json in the
               layout of stabilityai/stable-diffusion-2-1's `tokenizer/` (written by transformers
               4.2x: no `added_tokens_decoder`, so special_tokens_map.json's pad "!" overrides
               tokenizer_config.json's "<|endoftext|>", AddedToken dicts with "__type").
  clip_sd3/    the same vocabulary in the layout of SD 3's `tokenizer/` (CLIP-L: pad
               "<|endoftext|>", tokenizer_config.json with `added_tokens_decoder`).
  clip_sd3_2/  the same again as SD 3's `tokenizer_2/` (CLIP-G: pad "!").
  clip_fast/   what transformers 5's CLIPTokenizer.save_pretrained writes: tokenizer.json and
               tokenizer_config.json (pad "!").
  t5/          a sentencepiece unigram model (small custom normalisation rules, so the
               Precompiled normaliser is exercised) through transformers' T5Tokenizer and its
               save_pretrained: tokenizer.json, tokenizer_config.json (100 extra ids).

The CLIP vocabulary is built the way CLIP's own is ordered: the 256 byte characters, the same
with "</w>", one token per merge in merge order, then <|startoftext|> and <|endoftext|>. Merges
come from a plain BPE trainer over the pre-tokens of transformers' CLIPTokenizer pipeline.

references.json: for every folder, every caption's ids from `AutoTokenizer.from_pretrained`
(`padding="max_length", max_length=77, truncation=True`, as the pipelines call it; T5 also at
256, SD 3's `max_sequence_length` default), stored as the ids up to the attention mask's length
(the script checks that the rest is pad ids), the length, whether the untruncated encoding was
longer, and for clip_sd21 the character offsets of each position. To stay small, a row equal to
the same caption's row in the reference named by `same_as` is stored as null.

The folders are copied to weights/tiny-sd21/tokenizer and weights/tiny-sd3/tokenizer{,_2,_3}.
"""

import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer, CLIPTokenizer, T5Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from fixture_common import FIX, ROOT, fresh_dir

OUT = FIX / "tokenizers"
MERGES = 1500
T5_VOCAB = 800
CLIP_MAX = 77
T5_MAX = 256
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange",
           "brown", "grey", "golden", "silver", "turquoise", "crimson"]
NOUNS = ["cat", "dog", "giraffe", "horse", "cube", "sphere", "cone", "cylinder", "triangle",
         "square", "circle", "car", "bicycle", "teapot", "coffee cup", "table", "chair", "lamp",
         "book", "umbrella", "banana", "apple", "bird", "elephant", "boat", "clock", "vase",
         "backpack", "pizza", "toothbrush", "skateboard", "refrigerator", "sunflower", "zebra",
         "penguin", "kangaroo", "octopus", "dolphin", "squirrel", "rabbit", "turtle", "owl",
         "butterfly", "dragon", "unicorn", "robot", "astronaut", "wizard", "knight", "chef",
         "musician", "farmer", "lighthouse", "castle", "bridge", "skyscraper", "windmill",
         "tractor", "helicopter", "submarine", "locomotive", "motorcycle", "sailboat", "airplane",
         "guitar", "violin", "piano", "trumpet", "drum", "microphone", "camera", "telescope",
         "laptop", "keyboard", "television", "telephone", "envelope", "pencil", "notebook",
         "scissors", "hammer", "wrench", "ladder", "bucket", "basket", "bottle", "glass",
         "spoon", "fork", "knife", "plate", "bowl", "kettle", "sandwich", "hamburger", "donut",
         "croissant", "strawberry", "pineapple", "watermelon", "carrot", "broccoli", "mushroom",
         "cactus", "tulip", "rose", "oak tree", "palm tree", "mountain", "waterfall", "volcano",
         "river", "desert", "glacier", "island", "meadow", "candle", "lantern", "mirror",
         "pillow", "blanket", "sofa", "bookshelf", "staircase", "fountain", "statue", "kite",
         "balloon", "snowman", "pumpkin", "crown", "necklace", "sneaker", "hat", "scarf",
         "jacket", "suitcase", "wallet", "key", "door", "window", "fence", "mailbox", "bench"]
PLURAL = {"coffee cup": "coffee cups", "sphere": "spheres", "giraffe": "giraffes",
          "toothbrush": "toothbrushes", "bus": "buses", "box": "boxes"}
COUNTS = ["one", "two", "three", "four", "five", "2", "3", "7", "12", "a dozen", "several"]
TEXTURES = ["wooden", "metallic", "fluffy", "shiny", "striped", "rusty", "glass", "velvet"]
RELATIONS = ["on top of", "to the left of", "to the right of", "under", "next to", "behind",
             "in front of", "inside", "near", "above", "beside"]
STYLES = ["a photo of", "an oil painting of", "a watercolor of", "a 3D render of",
          "a pencil sketch of", "a close-up photo of", "digital art of", "a pixel-art image of"]
VERBS = ["sitting on", "holding", "riding", "chasing", "jumping over", "looking at",
         "playing with", "standing beside", "sleeping under", "eating", "reading", "painting",
         "carrying", "throwing", "balancing on", "hiding behind", "flying over", "swimming near"]
SCENES = ["in a park", "on a beach at sunset", "in the kitchen", "on Mars", "in Zürich",
          "at a café in Paris", "under the rain", "in 1920s New York", "in a snowy forest"]

HARD = [
    "",
    "   ",
    "A RED CAR",
    "a cat's toy and the dog's bone",
    "don't touch! they're here, we've seen it, I'm sure you'll like what he'd do",
    "rock'n'roll guitar",
    "it’s a ‘curly’ apostrophe",
    "ABC's and DON'T SHOUT",
    "multiple   spaces\tand tabs\nand\nnewlines",
    "  leading and trailing spaces  ",
    "non\u00a0breaking\u00a0space and\u3000ideographic space",
    "café, naïve, über, Zürich, résumé, Ελληνικά, русский кот",
    "cafe\u0301 with a combining accent",
    "ÉCOLE and İstanbul and Straße",
    "日本の猫が東京タワーの前に座っている",
    "a cat 🐱 riding a rocket 🚀 to the moon 🌕!!",
    "emoji family 👨‍👩‍👧 and flags 🇫🇷🇯🇵",
    "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①②③",
    "numbers: 3.14159, 1,000,000, $100, 50%, 2×3, ½ and x²",
    "wow!!! really?! (yes) [no] {maybe} <html> a/b c\\d e|f",
    "hyphenated black-and-white state-of-the-art photo -- dashes — en–dash",
    "quotes \"double\" and 'single' and «guillemets»",
    "a sign that says <|endoftext|> in the middle",
    "<|startoftext|>already marked<|endoftext|>",
    "UPPER <|ENDOFTEXT|> case special",
    "!!!",
    "a!b!c! d !e",
    "...",
    "McDonald's iPhone 15 Pro Max, GPT-4o and U.S.A.",
    "e-mail: someone@example.com, url: https://example.com/a?b=c&d=e#f",
    "tab\tseparated\tcolumns",
    "a\r\nwindows line ending",
    "mixed ČŠŽ čšž ąęł ñ ç ø å æ œ",
    "arabic قطة and hebrew חתול and hindi बिल्ली and thai แมว",
    "korean 고양이 and chinese 猫咪 and japanese ねこ",
]


def plural(noun: str, n: str) -> str:
    if n in ("one",):
        return noun
    return PLURAL.get(noun, noun + "s")


def generate_captions(count: int, seed: int) -> list[str]:
    """Varied captions: objects with attributes, counts, relations, styles, scenes, punctuation."""
    rng = random.Random(seed)

    def thing():
        parts = []
        if rng.random() < 0.7:
            parts.append(rng.choice(COLOURS))
        if rng.random() < 0.3:
            parts.append(rng.choice(TEXTURES))
        noun = rng.choice(NOUNS)
        parts.append(noun)
        return " ".join(parts)

    out = []
    for i in range(count):
        kind = rng.randrange(8)
        if kind == 0:
            c = f"a {thing()} {rng.choice(RELATIONS)} a {thing()}"
        elif kind == 1:
            n1, n2 = rng.choice(COUNTS), rng.choice(COUNTS)
            a, b = rng.choice(NOUNS), rng.choice(NOUNS)
            c = (f"{n1} {rng.choice(COLOURS)} {plural(a, n1)} and {n2} "
                 f"{rng.choice(COLOURS)} {plural(b, n2)}")
        elif kind == 2:
            c = f"{rng.choice(STYLES)} a {thing()} {rng.choice(SCENES)}"
        elif kind == 3:
            c = f"The {thing()}'s shadow, {rng.choice(SCENES)}; it isn't {rng.choice(COLOURS)}."
        elif kind == 4:
            c = f"{thing().upper()}!  {rng.choice(SCENES).title()}?"
        elif kind == 5:
            c = ", ".join(f"a {thing()}" for _ in range(rng.randint(2, 5)))
        elif kind == 6:
            c = f"a {thing()} {rng.choice(VERBS)} a {thing()} {rng.choice(SCENES)}"
        else:
            c = (f"{rng.choice(STYLES)} {rng.randint(2, 99)} {plural(rng.choice(NOUNS), 'many')}"
                 f" ({rng.randint(1, 9)}.{rng.randint(0, 9)} m tall) {rng.choice(SCENES)}")
        if rng.random() < 0.15:
            c = c.replace(" ", "  ", 1)
        if rng.random() < 0.1:
            c = c + "\n"
        out.append(c)
    return out


def long_captions(seed: int) -> list[str]:
    """Captions past 77 CLIP tokens, two past 256 T5 tokens."""
    rng = random.Random(seed)
    out = []
    for words in (60, 80, 120, 200, 330, 420):
        ws = []
        while len(ws) < words:
            ws += [rng.choice(["a", "the", "with"]), rng.choice(COLOURS), rng.choice(NOUNS) + ","]
        out.append(" ".join(ws))
    return out


def captions() -> list[str]:
    """The captions of the references: hard cases, long ones, generated ones."""
    return HARD + long_captions(7) + generate_captions(260, 3)


def training_corpus() -> list[str]:
    """What the vocabularies are trained on: the reference captions and more generated ones."""
    return captions() + generate_captions(4000, 11)


# ----------------------------------------------------------------------------------------------
# CLIP BPE vocabulary
# ----------------------------------------------------------------------------------------------

def clip_pretokens(text: str, backend) -> list[str]:
    """The byte-level pre-tokens transformers' CLIPTokenizer pipeline makes of `text`."""
    normalized = backend.normalizer.normalize_str(text)
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


def train_bpe(corpus: list[str], merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Plain BPE with CLIP's end-of-word suffix: the most frequent adjacent pair is merged
    first, ties by the pair's text; a pair whose merged token already exists is skipped."""
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base]
    # An empty-vocabulary CLIPTokenizer still carries CLIP's normaliser and pre-tokeniser.
    backend = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer
    counts = Counter(w for text in corpus for w in clip_pretokens(text, backend))
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in counts.items()}
    known = set(vocab)
    out = []
    while len(out) < merges:
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        ranked = sorted(((n, p) for p, n in pairs.items() if p[0] + p[1] not in known),
                        key=lambda x: (-x[0], x[1]))
        if not ranked or ranked[0][0] < 2:
            break
        a, b = ranked[0][1]
        out.append((a, b))
        known.add(a + b)
        vocab.append(a + b)
        merged = {}
        for w, n in words.items():
            i, new = 0, []
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    new.append(a + b)
                    i += 2
                else:
                    new.append(w[i])
                    i += 1
            merged[tuple(new)] = merged.get(tuple(new), 0) + n
        words = merged
    return vocab + [BOS, EOS], out


def added(content, normalized, typed):
    d = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
         "single_word": False}
    return {"__type": "AddedToken", **d} if typed else {**d, "special": True}


def dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def write_clip_files(dest: Path, vocab: list[str], merges) -> None:
    dest.mkdir(parents=True)
    (dest / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def write_clip_sd21(dest: Path, vocab, merges) -> None:
    """SD 2.1's layout: special tokens as AddedToken dicts, pad differs between the files."""
    write_clip_files(dest, vocab, merges)
    special = {k: added(v, True, True) for k, v in
               [("bos_token", BOS), ("eos_token", EOS), ("unk_token", EOS)]}
    dump(dest / "special_tokens_map.json", {**special, "pad_token": "!"})
    dump(dest / "tokenizer_config.json", {
        **special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
        "model_max_length": CLIP_MAX, "pad_token": EOS,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer"})


def write_clip_sd3(dest: Path, vocab, merges, pad: str) -> None:
    """SD 3's layout (transformers 4.4x): `added_tokens_decoder` in tokenizer_config.json."""
    write_clip_files(dest, vocab, merges)
    ids = {t: i for i, t in enumerate(vocab)}
    special = {"bos_token": added(BOS, True, False), "eos_token": added(EOS, False, False),
               "unk_token": added(EOS, False, False),
               "pad_token": added(pad, False, False) if pad != EOS else added(EOS, False, False)}
    for v in special.values():
        v.pop("special")
    dump(dest / "special_tokens_map.json", special)
    decoder = {str(ids[BOS]): added(BOS, True, False), str(ids[EOS]): added(EOS, False, False)}
    if pad != EOS:
        decoder[str(ids[pad])] = added(pad, False, False)
    dump(dest / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": decoder, "bos_token": BOS,
        "clean_up_tokenization_spaces": True, "do_lower_case": True, "eos_token": EOS,
        "errors": "replace", "model_max_length": CLIP_MAX, "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer", "unk_token": EOS})


def write_clip_fast(dest: Path, src: Path) -> None:
    """transformers 5's own save of a CLIPTokenizer: tokenizer.json + tokenizer_config.json."""
    tok = CLIPTokenizer(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"),
                        pad_token="!", model_max_length=CLIP_MAX)
    tok.save_pretrained(dest)


# ----------------------------------------------------------------------------------------------
# T5 sentencepiece model
# ----------------------------------------------------------------------------------------------

def normalization_rules() -> str:
    """A few NFKC-style rules (full-width ASCII, ligatures, circled digits, odd spaces): a small
    precompiled charsmap, unlike nmt_nfkc's 240 KB."""
    rules = [(0xFF01 + i, 0x21 + i) for i in range(94)]
    rules += [(0x2460 + i, 0x31 + i) for i in range(9)]
    rules += [(0xA0, 0x20), (0x3000, 0x20), (0x2009, 0x20)]
    lines = [f"{s:X}\t{t:X}" for s, t in rules]
    lines += ["FB01\t66 69", "FB02\t66 6C", "65 301\tE9", "B2\t32", "BD\t31 2044 32"]
    return "\n".join(lines) + "\n"


def train_t5(dest: Path, corpus: list[str]) -> None:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text(
            "\n".join(" ".join(c.split()) for c in corpus if c.strip()) + "\n", encoding="utf-8")
        (tmp / "rules.tsv").write_text(normalization_rules(), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "spiece"),
            model_type="unigram", vocab_size=T5_VOCAB, character_coverage=1.0,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_tsv=str(tmp / "rules.tsv"),
            num_threads=1, seed_sentencepiece_size=100000, shuffle_input_sentence=False,
            minloglevel=2)
        spm_dir = tmp / "spm"
        spm_dir.mkdir()
        shutil.copy(tmp / "spiece.model", spm_dir / "spiece.model")
        tok = T5Tokenizer.from_pretrained(spm_dir, model_max_length=512)
        tok.save_pretrained(dest)


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------

def encode_all(folder: Path, texts: list[str], max_length: int, offsets: bool) -> dict:
    tok = AutoTokenizer.from_pretrained(folder)
    if (folder / "vocab.json").exists():
        slow = CLIPTokenizer.from_pretrained(folder)
        assert slow.pad_token_id == tok.pad_token_id
    pad = tok.pad_token_id
    rows = []
    for text in texts:
        enc = tok(text, padding="max_length", max_length=max_length, truncation=True,
                  return_offsets_mapping=offsets)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        n = sum(mask)
        assert len(ids) == max_length and mask[:n] == [1] * n
        assert all(i == pad for i in ids[n:]), (folder, text)
        full = tok(text)["input_ids"]
        row = {"ids": ids[:n], "len": n, "truncated": len(full) > max_length}
        if offsets:
            row["offsets"] = [list(o) for o in enc["offset_mapping"][:n]]
        rows.append(row)
    return {"pad_id": pad, "pad_token": tok.pad_token, "max_length": max_length,
            "vocab_size": len(tok), "rows": rows}


def make_all() -> None:
    texts = captions()
    corpus = training_corpus()
    vocab, merges = train_bpe(corpus, MERGES)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ["clip_sd21", "clip_sd3", "clip_sd3_2", "clip_fast", "t5"]:
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)
    write_clip_sd21(OUT / "clip_sd21", vocab, merges)
    write_clip_sd3(OUT / "clip_sd3", vocab, merges, EOS)
    write_clip_sd3(OUT / "clip_sd3_2", vocab, merges, "!")
    write_clip_fast(OUT / "clip_fast", OUT / "clip_sd21")
    train_t5(OUT / "t5", corpus)

    refs = {"captions": texts}
    for name in ["clip_sd21", "clip_sd3", "clip_sd3_2", "clip_fast"]:
        refs[name] = encode_all(OUT / name, texts, CLIP_MAX, name == "clip_sd21")
    refs["t5"] = encode_all(OUT / "t5", texts, T5_MAX, False)
    refs["t5_77"] = encode_all(OUT / "t5", texts, CLIP_MAX, False)
    assert refs["clip_sd21"]["pad_id"] == 0 and refs["clip_sd3"]["pad_token"] == EOS
    assert refs["clip_sd3_2"]["pad_id"] == 0 and refs["clip_fast"]["pad_id"] == 0
    long = sum(r["truncated"] for r in refs["clip_sd21"]["rows"])
    # Keep the file small: a row equal to the base reference's row is stored as null.
    for name, base in [("clip_sd3", "clip_sd21"), ("clip_sd3_2", "clip_sd21"),
                       ("clip_fast", "clip_sd21"), ("t5_77", "t5")]:
        base_rows = [{k: r[k] for k in ("ids", "len", "truncated")} for r in refs[base]["rows"]]
        refs[name]["same_as"] = base
        refs[name]["rows"] = [None if r == b else r for r, b in zip(refs[name]["rows"], base_rows)]
    (OUT / "references.json").write_text(
        json.dumps(refs, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    for src, dest in [("clip_sd21", "tiny-sd21/tokenizer"), ("clip_sd3", "tiny-sd3/tokenizer"),
                      ("clip_sd3_2", "tiny-sd3/tokenizer_2"), ("t5", "tiny-sd3/tokenizer_3")]:
        target = ROOT / "weights" / dest
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(OUT / src, target)
    print(f"tokenizers: {len(texts)} captions ({long} past {CLIP_MAX} CLIP tokens), "
          f"CLIP vocab {len(vocab)} ({len(merges)} merges), T5 vocab {refs['t5']['vocab_size']}")
