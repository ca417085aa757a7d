"""Text-encoder parity fixtures (`make_fixtures.py --only text`), written by transformers itself.

tests/fixtures/text/ holds tiny random transformers models in their `save_pretrained` layout:
  sd21/     CLIPTextModel, exact GELU, eos_token_id 2 (legacy pooling: position of the largest id)
  clip_eos/ CLIPTextModel, quick_gelu, eos_token_id 50 = pad_token_id (first eos position)
  clip_l/   CLIPTextModelWithProjection, quick_gelu, 3 layers (SD 3's CLIP-L shape)
  clip_g/   CLIPTextModelWithProjection, exact GELU (SD 3's CLIP-G shape)
  t5/       T5EncoderModel, gated-gelu (T5 v1.1 shape), 4 heads of 8 in a width of 64
plus inputs.safetensors (token ids and a T5 attention mask, as f32) and outputs.safetensors:
every model's outputs in float64 stored as f32 (`<model>.last_hidden_state`,
`<model>.hidden_states.<i>`, `<model>.pooler_output`, `<model>.text_embeds`, `t5.*`), the
SD 3 conditioning computed by diffusers' own `StableDiffusion3Pipeline.encode_prompt` on these
encoders (stub tokenizers returning the fixed ids), with and without T5, and T5's relative
position buckets for positions -300..300.

Also the key manifests (meta device, no weights) and config.json of the published text
encoders: SD 2.1's text_encoder, SD 3's CLIP-L, CLIP-G and T5-XXL.
"""

import types

import torch
from safetensors.torch import save_file
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config,
                          T5EncoderModel)
from transformers.models.t5.modeling_t5 import T5Attention
from diffusers import StableDiffusion3Pipeline

from fixture_common import FIX, f32, fresh_dir, randomize

OUT = FIX / "text"
CLIP_SEQ = 12
T5_SEQ = 20

TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=48, projection_dim=20,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
            bos_token_id=97, pad_token_id=0)

CLIP_CASES = {
    # The Rust `ClipTextConfig::tiny()`.
    "sd21": (CLIPTextModel, dict(TINY, hidden_act="gelu", eos_token_id=2)),
    "clip_eos": (CLIPTextModel, dict(TINY, hidden_act="quick_gelu", num_attention_heads=2,
                                     eos_token_id=50, pad_token_id=50)),
    "clip_l": (CLIPTextModelWithProjection,
               dict(TINY, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                    hidden_act="quick_gelu", eos_token_id=2)),
    "clip_g": (CLIPTextModelWithProjection,
               dict(TINY, projection_dim=28, hidden_act="gelu", eos_token_id=2)),
}

# The Rust `T5Config::tiny()`.
T5_TINY = dict(vocab_size=128, d_model=64, d_kv=8, d_ff=80, num_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
               relative_attention_max_distance=128)


def token_ids(g):
    """Per model `[batch, CLIP_SEQ]` ids (random words in 3..96, bos 97) laid out for its
    pooling rule; the comments say what a wrong rule would pick instead."""
    def words(n):
        return torch.randint(3, 97, (n,), generator=g).tolist()
    ids = {}
    # Legacy pooling (argmax of ids): the "end" token 98 is the largest id. Row 0 pads with 0
    # (SD 2.1's "!"), row 1 pads with 98 itself (SD 1.x style): argmax ties, the first wins.
    ids["sd21"] = [[97] + words(5) + [98] + [0] * 5, [97] + words(8) + [98] * 3]
    # eos 50 (= pad): the first 50. The words avoid 50 and include a 96, so argmax of ids
    # would pick another position; row 2 has no eos at all (transformers then pools row 0).
    w = [t if t != 50 else 51 for t in words(20)]
    ids["clip_eos"] = [[97] + w[:4] + [96] + [50] * 6,
                       [97, 96] + w[4:11] + [50] * 3,
                       [97] + w[11:20] + [96, 3]]
    # SD 3: CLIP-L pads with its end token, CLIP-G with 0.
    ids["clip_l"] = [[97] + words(4) + [98] * 7, [97] + words(9) + [98] * 2]
    ids["clip_g"] = [[97] + words(4) + [98] + [0] * 6, [97] + words(9) + [98, 0]]
    # T5: words in 2..127, eos 1, padding 0 (SD 3 pads to max_sequence_length, no mask).
    t5 = [torch.randint(2, 128, (n,), generator=g).tolist() for n in (7, 15)]
    ids["t5"] = [row + [1] + [0] * (T5_SEQ - len(row) - 1) for row in t5]
    out = {k: torch.tensor(v) for k, v in ids.items()}
    out["t5_attention_mask"] = (out["t5"] != 0).long()
    out["t5_attention_mask"][:, :1] = 1
    # The eos itself is attended to: mask = 1 up to and including the 1.
    for r, row in enumerate(t5):
        out["t5_attention_mask"][r, : len(row) + 1] = 1
    return out


def double_copy(model):
    ref = type(model)(model.config).to(torch.float64).eval()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return ref


def make_clip(name, cls, cfg, ids, outputs, seed):
    torch.manual_seed(seed)
    model = cls(CLIPTextConfig(**cfg)).eval()
    randomize(model, seed + 100)
    model.save_pretrained(OUT / name, safe_serialization=True)
    ref = double_copy(model)
    with torch.no_grad():
        out = ref(ids, output_hidden_states=True)
    outputs[f"{name}.last_hidden_state"] = out.last_hidden_state
    for i, h in enumerate(out.hidden_states):
        outputs[f"{name}.hidden_states.{i}"] = h
    if cls is CLIPTextModel:
        outputs[f"{name}.pooler_output"] = out.pooler_output
    else:
        outputs[f"{name}.text_embeds"] = out.text_embeds
        with torch.no_grad():
            outputs[f"{name}.pooler_output"] = ref.text_model(ids).pooler_output
    print(f"text {name}: {sum(p.numel() for p in model.parameters())} params")
    return ref


def make_t5(ids, mask, outputs, seed):
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(**T5_TINY)).eval()
    randomize(model, seed + 100)
    model.save_pretrained(OUT / "t5", safe_serialization=True)
    ref = double_copy(model)
    with torch.no_grad():
        outputs["t5.last_hidden_state"] = ref(ids).last_hidden_state
        outputs["t5.masked.last_hidden_state"] = ref(ids, attention_mask=mask).last_hidden_state
    # Buckets of relative positions -300..300: SD 3's 32/128 and a small table whose
    # logarithmic range starts early.
    rel = torch.arange(-300, 301)
    outputs["t5.buckets.32_128"] = T5Attention._relative_position_bucket(rel, True, 32, 128)
    outputs["t5.buckets.8_20"] = T5Attention._relative_position_bucket(rel, True, 8, 20)
    print(f"text t5: {sum(p.numel() for p in model.parameters())} params")
    return ref


class StubTokenizer:
    """Returns fixed ids, whatever the prompt (diffusers then sees nothing truncated)."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, prompt, **kwargs):
        return types.SimpleNamespace(input_ids=self.ids)


def sd3_encode(clip_l, clip_g, t5, ids, joint_attention_dim):
    """`StableDiffusion3Pipeline.encode_prompt` itself on a stub pipeline holding the tiny
    encoders (diffusers 0.42.1, pipeline_stable_diffusion_3.py: `_get_clip_prompt_embeds`,
    `_get_t5_prompt_embeds`, `encode_prompt`)."""
    pipe = types.SimpleNamespace(
        tokenizer=StubTokenizer(ids["clip_l"]), tokenizer_2=StubTokenizer(ids["clip_g"]),
        tokenizer_3=StubTokenizer(ids["t5"]), text_encoder=clip_l, text_encoder_2=clip_g,
        text_encoder_3=t5, tokenizer_max_length=CLIP_SEQ, _execution_device=torch.device("cpu"),
        transformer=types.SimpleNamespace(
            config=types.SimpleNamespace(joint_attention_dim=joint_attention_dim)))
    for method in ("_get_clip_prompt_embeds", "_get_t5_prompt_embeds"):
        setattr(pipe, method, types.MethodType(getattr(StableDiffusion3Pipeline, method), pipe))
    prompts = ["prompt"] * ids["clip_l"].shape[0]
    with torch.no_grad():
        embeds, _, pooled, _ = StableDiffusion3Pipeline.encode_prompt(
            pipe, prompt=prompts, prompt_2=None, prompt_3=None, device=torch.device("cpu"),
            do_classifier_free_guidance=False, max_sequence_length=T5_SEQ)
    return embeds, pooled


def make_cases():
    fresh_dir(OUT)
    g = torch.Generator().manual_seed(40)
    ids = token_ids(g)
    outputs = {}
    refs = {}
    for i, (name, (cls, cfg)) in enumerate(CLIP_CASES.items()):
        refs[name] = make_clip(name, cls, cfg, ids[name], outputs, 41 + i)
    t5 = make_t5(ids["t5"], ids["t5_attention_mask"], outputs, 49)
    embeds, pooled = sd3_encode(refs["clip_l"], refs["clip_g"], t5, ids, T5_TINY["d_model"])
    outputs["sd3.prompt_embeds"] = embeds
    outputs["sd3.pooled_prompt_embeds"] = pooled
    embeds, _ = sd3_encode(refs["clip_l"], refs["clip_g"], None, ids, T5_TINY["d_model"])
    outputs["sd3_no_t5.prompt_embeds"] = embeds
    save_file(f32({k: v.float() for k, v in ids.items()}), OUT / "inputs.safetensors")
    save_file(f32({k: v.double() for k, v in outputs.items()}), OUT / "outputs.safetensors")


# ----------------------------------------------------------------------------------------------
# Published configs (from the stabilityai repositories' config.json) and their key manifests
# ----------------------------------------------------------------------------------------------

SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512,
                 num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                 hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
                 pad_token_id=1)
SD3_CLIP_L = dict(SD21_TEXT, hidden_size=768, intermediate_size=3072, projection_dim=768,
                  num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu")
SD3_CLIP_G = dict(SD21_TEXT, hidden_size=1280, intermediate_size=5120, projection_dim=1280,
                  num_hidden_layers=32, num_attention_heads=20)
SD3_T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu")


def write_key_manifest(name, state_dict, config):
    out = FIX / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} {list(v.shape)}" for k, v in sorted(state_dict.items())]
    (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (out / f"{name}.config.json").write_text(config.to_json_string())
    print(f"manifest {name}: {len(lines)} keys")


def make_manifests():
    with torch.device("meta"):
        # The published SD 2.1 file (transformers 4.25) keys CLIPTextModel under `text_model.`;
        # transformers 5 drops that prefix in memory, so it is put back here.
        cfg = CLIPTextConfig(**SD21_TEXT)
        sd = {f"text_model.{k}": v for k, v in CLIPTextModel(cfg).state_dict().items()}
        write_key_manifest("sd21_text_encoder", sd, cfg)
        for name, spec in [("sd3_text_encoder", SD3_CLIP_L), ("sd3_text_encoder_2", SD3_CLIP_G)]:
            cfg = CLIPTextConfig(**spec)
            write_key_manifest(name, CLIPTextModelWithProjection(cfg).state_dict(), cfg)
        # The tied `encoder.embed_tokens.weight` is not written by save_pretrained.
        cfg = T5Config(**SD3_T5)
        sd = T5EncoderModel(cfg).state_dict()
        sd.pop("encoder.embed_tokens.weight")
        write_key_manifest("sd3_text_encoder_3", sd, cfg)


def make_all():
    make_cases()
    make_manifests()
