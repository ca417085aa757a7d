//! The conditioning the denoisers read from the text encoders, as diffusers assembles it:
//! SD 2.1's `StableDiffusionPipeline.encode_prompt` (the text model's `last_hidden_state`) and
//! SD 3's `StableDiffusion3Pipeline.encode_prompt`
//! (`diffusers/pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`, 0.42.1:
//! `_get_clip_prompt_embeds`, `_get_t5_prompt_embeds`, and the concatenations in
//! `encode_prompt`), with `clip_skip = None` and one image per prompt.

use crate::backend::KernelBackend;
use burn::module::Module;
use burn::tensor::{Int, Tensor, backend::Backend};

use super::clip::{ClipTextModel, ClipTextModelWithProjection, ClipTextOutput};
use super::t5::T5EncoderModel;
use crate::error::{Error, Result};

/// SD 2.1's `encoder_hidden_states`: the text model's `last_hidden_state` (final LayerNorm
/// applied), `[batch, seq, hidden]` (`encode_prompt` with `clip_skip=None`).
pub fn sd21_prompt_embeds<B: KernelBackend>(
    text_encoder: &ClipTextModel<B>,
    input_ids: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 3>> {
    Ok(text_encoder.forward(input_ids, false)?.last_hidden_state)
}

/// SD 3's conditioning: what `StableDiffusion3Pipeline.encode_prompt` returns as
/// `prompt_embeds` and `pooled_prompt_embeds`.
#[derive(Debug, Clone)]
pub struct Sd3PromptEmbeds<B: Backend> {
    /// `[batch, clip_seq + t5_seq, t5_width]`: the CLIP tokens (CLIP-L and CLIP-G features
    /// side by side, zero-padded to the T5 width) followed by the T5 tokens.
    pub prompt_embeds: Tensor<B, 3>,
    /// `[batch, clip_l_projection + clip_g_projection]`: both projected pooled outputs.
    pub pooled_prompt_embeds: Tensor<B, 2>,
}

/// Assembles SD 3's conditioning from the encoders' outputs, as `encode_prompt` does:
/// 1. per CLIP, the penultimate hidden state `hidden_states[-2]` (the second-to-last layer's
///    output, no final norm) and the pooled `text_embeds` (`_get_clip_prompt_embeds`);
/// 2. the two hidden states concatenated on the feature axis, zero-padded on the right to
///    `t5`'s width (`torch.nn.functional.pad`);
/// 3. concatenated with the T5 tokens on the sequence axis; the pooled outputs concatenated.
///
/// `clip_l` and `clip_g` must come from [`ClipTextModelWithProjection::forward`] with
/// `output_hidden_states = true`; `t5` is the T5 `last_hidden_state` or [`t5_zeros`].
pub fn sd3_prompt_embeds<B: KernelBackend>(
    clip_l: &ClipTextOutput<B>,
    clip_g: &ClipTextOutput<B>,
    t5: Tensor<B, 3>,
) -> Result<Sd3PromptEmbeds<B>> {
    let (l_hidden, l_pooled) = clip_parts(clip_l, "CLIP-L")?;
    let (g_hidden, g_pooled) = clip_parts(clip_g, "CLIP-G")?;
    let [b, s, wl] = l_hidden.dims();
    let [bg, sg, wg] = g_hidden.dims();
    let [bt, _, wt] = t5.dims();
    if (bg, sg) != (b, s) || bt != b {
        return Err(Error::Input(format!(
            "SD 3 text encoders disagree on batch or CLIP length: CLIP-L {:?}, CLIP-G {:?}, \
             T5 {:?}",
            l_hidden.dims(),
            g_hidden.dims(),
            t5.dims()
        )));
    }
    if wl + wg > wt {
        return Err(Error::Input(format!(
            "CLIP widths {wl} + {wg} exceed the T5 width {wt} they are padded to"
        )));
    }
    let device = t5.device();
    let mut clip = vec![l_hidden, g_hidden];
    if wl + wg < wt {
        clip.push(Tensor::zeros([b, s, wt - wl - wg], &device));
    }
    let clip = Tensor::cat(clip, 2);
    Ok(Sd3PromptEmbeds {
        prompt_embeds: Tensor::cat(vec![clip, t5], 1),
        pooled_prompt_embeds: Tensor::cat(vec![l_pooled, g_pooled], 1),
    })
}

/// What `_get_t5_prompt_embeds` returns without `text_encoder_3`: zeros
/// `[batch, max_sequence_length, joint_attention_dim]` (256 and 4096 for SD 3).
pub fn t5_zeros<B: Backend>(
    batch: usize,
    max_sequence_length: usize,
    joint_attention_dim: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    Tensor::zeros([batch, max_sequence_length, joint_attention_dim], device)
}

fn clip_parts<B: KernelBackend>(
    out: &ClipTextOutput<B>,
    name: &str,
) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
    let hidden = out.hidden_states.as_ref().filter(|h| h.len() >= 2);
    match (hidden, &out.text_embeds) {
        (Some(h), Some(pooled)) => Ok((h[h.len() - 2].clone(), pooled.clone())),
        _ => Err(Error::Input(format!(
            "{name} output lacks hidden_states or text_embeds: run the projection model with \
             output_hidden_states = true"
        ))),
    }
}

/// Token ids for SD 3's three encoders (each `[batch, seq]`).
#[derive(Debug, Clone)]
pub struct Sd3TokenIds<B: Backend> {
    /// For `text_encoder` (CLIP-L), 77 tokens in SD 3.
    pub clip_l: Tensor<B, 2, Int>,
    /// For `text_encoder_2` (CLIP-G).
    pub clip_g: Tensor<B, 2, Int>,
    /// For `text_encoder_3` (T5), `max_sequence_length` tokens; unused without it.
    pub t5: Option<Tensor<B, 2, Int>>,
}

/// SD 3's three text encoders, named as the pipeline's components.
#[derive(Module, Debug)]
pub struct Sd3TextEncoders<B: Backend> {
    /// CLIP-L (`text_encoder`).
    pub text_encoder: ClipTextModelWithProjection<B>,
    /// CLIP-G (`text_encoder_2`).
    pub text_encoder_2: ClipTextModelWithProjection<B>,
    /// T5-XXL (`text_encoder_3`), optional as in diffusers (`text_encoder_3=None`).
    pub text_encoder_3: Option<T5EncoderModel<B>>,
}

impl<B: KernelBackend> Sd3TextEncoders<B> {
    /// Runs the encoders and assembles [`Sd3PromptEmbeds`] ([`sd3_prompt_embeds`]). Without
    /// `text_encoder_3` the T5 part is [`t5_zeros`] of `max_sequence_length` by
    /// `joint_attention_dim` (the transformer's config); with it, `ids.t5` is required.
    pub fn encode(
        &self,
        ids: Sd3TokenIds<B>,
        max_sequence_length: usize,
        joint_attention_dim: usize,
    ) -> Result<Sd3PromptEmbeds<B>> {
        let batch = ids.clip_l.dims()[0];
        let device = ids.clip_l.device();
        let clip_l = self.text_encoder.forward(ids.clip_l, true)?;
        let clip_g = self.text_encoder_2.forward(ids.clip_g, true)?;
        let t5 = match (&self.text_encoder_3, ids.t5) {
            (Some(t5), Some(t5_ids)) => t5.forward(t5_ids, None)?,
            (Some(_), None) => {
                return Err(Error::Input(
                    "SD 3 text_encoder_3 is loaded but no T5 token ids were given".into(),
                ));
            }
            (None, _) => t5_zeros(batch, max_sequence_length, joint_attention_dim, &device),
        };
        sd3_prompt_embeds(&clip_l, &clip_g, t5)
    }
}
