//! The CLIP text tower: transformers' `CLIPTextEmbeddings`, `CLIPAttention`, `CLIPMLP`,
//! `CLIPEncoderLayer`, `CLIPEncoder` and `CLIPTextTransformer`
//! (`transformers/models/clip/modeling_clip.py`).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

use super::config::{ClipActivation, ClipTextConfig};
use crate::error::{Error, Result};
use crate::nn::LoraLinear;
use crate::nn::{gelu, quick_gelu};

/// Token plus learned position embeddings (`embeddings`).
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden_size]`.
    pub token_embedding: Embedding<B>,
    /// `[max_position_embeddings, hidden_size]`, rows `0..seq` are used.
    pub position_embedding: Embedding<B>,
}

/// Causal multi-head self-attention (`self_attn`), scores scaled by `head_dim^-0.5`.
///
/// The projections are [`LoraLinear`]s without adapters, so the LoRA machinery can target
/// `q_proj`, `k_proj`, `v_proj` and `out_proj` (see [`crate::lora`]).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// Query projection.
    pub q_proj: LoraLinear<B>,
    /// Key projection.
    pub k_proj: LoraLinear<B>,
    /// Value projection.
    pub v_proj: LoraLinear<B>,
    /// Output projection.
    pub out_proj: LoraLinear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

/// `fc1`, activation, `fc2` (`mlp`).
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// `hidden_size -> intermediate_size`.
    pub fc1: Linear<B>,
    /// `intermediate_size -> hidden_size`.
    pub fc2: Linear<B>,
    /// The activation between them.
    pub activation: ClipActivation,
}

/// Pre-LayerNorm residual block: attention, then MLP (`encoder.layers.N`).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Causal self-attention.
    pub self_attn: ClipAttention<B>,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: ClipMlp<B>,
}

/// The layer stack (`encoder`).
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// `num_hidden_layers` layers.
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// Embeddings, encoder and final norm: transformers 4.x's `CLIPTextTransformer`, the
/// `text_model` of both [`ClipTextModel`](super::ClipTextModel) and
/// [`ClipTextModelWithProjection`](super::ClipTextModelWithProjection).
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    /// Token and position embeddings.
    pub embeddings: ClipTextEmbeddings<B>,
    /// The layers.
    pub encoder: ClipEncoder<B>,
    /// LayerNorm after the last layer.
    pub final_layer_norm: LayerNorm<B>,
    /// End-of-text id that picks the pooled position (2: legacy largest-id rule).
    pub eos_token_id: usize,
}

/// What the text tower computes.
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// `[batch, seq, hidden]`: the last layer's output after `final_layer_norm`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`: `last_hidden_state` at each row's end-of-text position.
    pub pooler_output: Tensor<B, 2>,
    /// The embeddings' output followed by every layer's output (`num_hidden_layers + 1`
    /// tensors `[batch, seq, hidden]`, the last one before `final_layer_norm`), as
    /// transformers' `output_hidden_states=True` gives; `None` unless asked for.
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
    /// `[batch, projection_dim]`: `text_projection(pooler_output)`, projection variant only.
    pub text_embeds: Option<Tensor<B, 2>>,
}

impl ClipTextConfig {
    /// Builds the text tower (`text_model`) with burn's default initialisation.
    pub fn init_transformer<B: Backend>(&self, device: &B::Device) -> ClipTextTransformer<B> {
        let (h, eps) = (self.hidden_size, self.layer_norm_eps);
        let norm = || LayerNormConfig::new(h).with_epsilon(eps).init(device);
        let proj = || LoraLinear::new(LinearConfig::new(h, h).init(device));
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                layer_norm1: norm(),
                self_attn: ClipAttention {
                    q_proj: proj(),
                    k_proj: proj(),
                    v_proj: proj(),
                    out_proj: proj(),
                    num_heads: self.num_attention_heads,
                },
                layer_norm2: norm(),
                mlp: ClipMlp {
                    fc1: LinearConfig::new(h, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, h).init(device),
                    activation: self.hidden_act,
                },
            })
            .collect();
        ClipTextTransformer {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
            },
            encoder: ClipEncoder { layers },
            final_layer_norm: norm(),
            eos_token_id: self.eos_token_id,
        }
    }
}

impl<B: crate::backend::KernelBackend> ClipTextTransformer<B> {
    /// Runs the tower on token ids (no attention mask: SD pipelines pass none to CLIP).
    ///
    /// `output_hidden_states` keeps every layer's output (memory for `num_hidden_layers + 1`
    /// activations). Errors when the sequence is longer than the position table.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, every id below `vocab_size`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        output_hidden_states: bool,
    ) -> Result<ClipTextOutput<B>> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let max = self.embeddings.position_embedding.weight.lazy_shape()[0];
        if seq > max || seq == 0 {
            return Err(Error::Input(format!(
                "CLIP input_ids have {seq} tokens; the model takes 1 to {max} \
                 (max_position_embeddings)"
            )));
        }
        // 1. Token embeddings plus positions 0..seq.
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let mut h = self.embeddings.token_embedding.forward(input_ids.clone())
            + self.embeddings.position_embedding.forward(positions);
        // 2. Causal layers, keeping each output when asked.
        let mask = causal_mask::<B>(seq, &device);
        let mut hidden = output_hidden_states.then(Vec::new);
        for layer in &self.encoder.layers {
            if let Some(list) = hidden.as_mut() {
                list.push(h.clone());
            }
            h = layer.forward(h, mask.clone());
        }
        if let Some(list) = hidden.as_mut() {
            list.push(h.clone());
        }
        // 3. Final norm, then the pooled row at each sequence's end-of-text position.
        let last = self.final_layer_norm.forward(h);
        let hidden_size = last.dims()[2];
        let index = self
            .pooled_positions(input_ids)
            .reshape([batch, 1, 1])
            .expand([batch, 1, hidden_size]);
        let pooled = last.clone().gather(1, index).reshape([batch, hidden_size]);
        Ok(ClipTextOutput {
            last_hidden_state: last,
            pooler_output: pooled,
            hidden_states: hidden,
            text_embeds: None,
        })
    }

    /// The position pooled from each row, as transformers 5.24 picks it: with
    /// `eos_token_id == 2` (configs written before transformers PR #24773) the first position
    /// of the row's largest id, otherwise the first position holding `eos_token_id` (0 when
    /// the row has none, as `argmax` of an all-zero row gives).
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, returns `[batch]`
    pub fn pooled_positions(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 1, Int> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let hit: Tensor<B, 2, Bool> = if self.eos_token_id == 2 {
            let max = input_ids.clone().max_dim(1).expand([batch, seq]);
            input_ids.equal(max)
        } else {
            input_ids.equal_elem(self.eos_token_id as i64)
        };
        // The first hit: the smallest position among hits (`seq` where there is none).
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let none = Tensor::<B, 2, Int>::full([batch, seq], seq as i64, &device);
        let first = none.mask_where(hit, positions).min_dim(1);
        let missing = first.clone().equal_elem(seq as i64);
        first.mask_fill(missing, 0).reshape([batch])
    }
}

impl<B: crate::backend::KernelBackend> ClipEncoderLayer<B> {
    /// `h + attn(norm1(h))`, then `h + mlp(norm2(h))`.
    pub fn forward(&self, h: Tensor<B, 3>, mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let h = h.clone() + self.self_attn.forward(self.layer_norm1.forward(h), mask);
        h.clone() + self.mlp.forward(self.layer_norm2.forward(h))
    }
}

impl<B: crate::backend::KernelBackend> ClipAttention<B> {
    /// Self-attention with `mask` (true = not attended) on the scores.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `mask`: `[seq, seq]`
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let [b, s, width] = x.dims();
        let heads = self.num_heads;
        let d = width / heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, heads, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((d as f64).powf(-0.5));
        let mask = mask.reshape([1, 1, s, s]).expand([b, heads, s, s]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, s, width]);
        self.out_proj.forward(out)
    }
}

impl<B: crate::backend::KernelBackend> ClipMlp<B> {
    /// `fc2(act(fc1(x)))`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc1.forward(x);
        let h = match self.activation {
            ClipActivation::QuickGelu => quick_gelu(h),
            ClipActivation::Gelu => gelu(h),
        };
        self.fc2.forward(h)
    }
}

/// `[seq, seq]`, true above the diagonal: query `i` does not see keys `j > i`.
fn causal_mask<B: Backend>(seq: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    let values: Vec<bool> = (0..seq * seq).map(|n| n % seq > n / seq).collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}
