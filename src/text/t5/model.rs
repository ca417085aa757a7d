//! The T5 encoder: transformers' `T5LayerNorm`, `T5Attention` (relative position bias, no
//! score scaling), `T5DenseActDense` / `T5DenseGatedActDense`, `T5Block`, `T5Stack` and
//! `T5EncoderModel` (`transformers/models/t5/modeling_t5.py`).
//!
//! Two fields keep transformers' CamelCase names (`SelfAttention`, `DenseReluDense`) so the
//! checkpoint loads by key; the lint is allowed for the whole file because burn's derive
//! generates code using the field names.
#![allow(non_snake_case)]

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::config::{T5Activation, T5Config};
use crate::error::{Error, Result};
use crate::nn::{gelu, gelu_tanh};

/// transformers' `T5EncoderModel`: the shared token embedding and the encoder stack.
///
/// `shared.weight` and `encoder.embed_tokens.weight` are one tied tensor in transformers; here
/// there is only [`shared`](Self::shared), and
/// [`load_transformers`](crate::text::load_transformers) accepts files holding either key.
#[derive(Module, Debug)]
pub struct T5EncoderModel<B: Backend> {
    /// `[vocab_size, d_model]` token embedding.
    pub shared: Embedding<B>,
    /// The blocks and final norm.
    pub encoder: T5Stack<B>,
}

/// The encoder stack (`encoder`).
#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    /// `num_layers` blocks; only the first owns the relative position bias.
    pub block: Vec<T5Block<B>>,
    /// RMS norm after the last block.
    pub final_layer_norm: RmsNorm<B>,
}

/// One block: `layer.0` self-attention, `layer.1` feed-forward, both pre-norm residual.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// `[SelfAttention, FeedForward]`, indexed as transformers' `layer` list.
    pub layer: Vec<T5Layer<B>>,
}

/// An entry of [`T5Block::layer`] (variant names do not appear in weight keys).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum T5Layer<B: Backend> {
    /// `layer.0`.
    SelfAttention(T5LayerSelfAttention<B>),
    /// `layer.1`.
    FeedForward(T5LayerFF<B>),
}

/// `layer.0`: `h + SelfAttention(layer_norm(h))`.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    /// The attention (transformers' field name).
    pub SelfAttention: T5Attention<B>,
    /// RMS norm before it.
    pub layer_norm: RmsNorm<B>,
}

/// `layer.1`: `h + DenseReluDense(layer_norm(h))`.
#[derive(Module, Debug)]
pub struct T5LayerFF<B: Backend> {
    /// The feed-forward (transformers' field name, whatever the activation).
    pub DenseReluDense: T5DenseFF<B>,
    /// RMS norm before it.
    pub layer_norm: RmsNorm<B>,
}

/// `wo(act(wi(x)))`, or gated `wo(act(wi_0(x)) * wi_1(x))`; no biases.
#[derive(Module, Debug)]
pub struct T5DenseFF<B: Backend> {
    /// Input projection of the plain variant.
    pub wi: Option<Linear<B>>,
    /// Activated input projection of the gated variant.
    pub wi_0: Option<Linear<B>>,
    /// Linear gate of the gated variant.
    pub wi_1: Option<Linear<B>>,
    /// Output projection.
    pub wo: Linear<B>,
    /// Activation (see [`T5Config::feed_forward`]).
    pub activation: T5Activation,
}

/// Multi-head self-attention without score scaling; block 0 owns the bucketed relative
/// position bias, which every block adds to its scores.
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    /// Query projection `d_model -> num_heads * d_kv`.
    pub q: Linear<B>,
    /// Key projection.
    pub k: Linear<B>,
    /// Value projection.
    pub v: Linear<B>,
    /// Output projection `num_heads * d_kv -> d_model`.
    pub o: Linear<B>,
    /// `[relative_attention_num_buckets, num_heads]`, block 0 only.
    pub relative_attention_bias: Option<Embedding<B>>,
    /// Number of heads.
    pub n_heads: usize,
    /// Bucket count (both directions).
    pub num_buckets: usize,
    /// Distance from which positions share the last bucket.
    pub max_distance: usize,
}

impl T5Config {
    /// Builds the encoder with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<T5EncoderModel<B>> {
        self.validate()?;
        let (gated, act) = self.feed_forward()?;
        let (d, inner) = (self.d_model, self.num_heads * self.d_kv);
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        let block = (0..self.num_layers)
            .map(|i| T5Block {
                layer: vec![
                    T5Layer::SelfAttention(T5LayerSelfAttention {
                        SelfAttention: T5Attention {
                            q: lin(d, inner),
                            k: lin(d, inner),
                            v: lin(d, inner),
                            o: lin(inner, d),
                            relative_attention_bias: (i == 0).then(|| {
                                EmbeddingConfig::new(
                                    self.relative_attention_num_buckets,
                                    self.num_heads,
                                )
                                .init(device)
                            }),
                            n_heads: self.num_heads,
                            num_buckets: self.relative_attention_num_buckets,
                            max_distance: self.relative_attention_max_distance,
                        },
                        layer_norm: norm(),
                    }),
                    T5Layer::FeedForward(T5LayerFF {
                        DenseReluDense: T5DenseFF {
                            wi: (!gated).then(|| lin(d, self.d_ff)),
                            wi_0: gated.then(|| lin(d, self.d_ff)),
                            wi_1: gated.then(|| lin(d, self.d_ff)),
                            wo: lin(self.d_ff, d),
                            activation: act,
                        },
                        layer_norm: norm(),
                    }),
                ],
            })
            .collect();
        Ok(T5EncoderModel {
            shared: EmbeddingConfig::new(self.vocab_size, d).init(device),
            encoder: T5Stack {
                block,
                final_layer_norm: norm(),
            },
        })
    }
}

impl<B: Backend> T5EncoderModel<B> {
    /// The encoder's `last_hidden_state`, `[batch, seq, d_model]`.
    ///
    /// `attention_mask` (`[batch, seq]`, 1 = token, 0 = padding) hides padded keys, as
    /// transformers' bidirectional mask does; SD 3 passes none (diffusers'
    /// `_get_t5_prompt_embeds`), so padding tokens are attended to.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, every id below `vocab_size`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input_ids.dims();
        if let Some(mask) = &attention_mask
            && mask.dims() != [batch, seq]
        {
            return Err(Error::Input(format!(
                "T5 attention_mask has shape {:?}, input_ids {:?}",
                mask.dims(),
                [batch, seq]
            )));
        }
        let padding = attention_mask.map(|m| m.equal_elem(0).reshape([batch, 1, 1, seq]));
        let mut h = self.shared.forward(input_ids);
        let mut bias: Option<Tensor<B, 4>> = None;
        for block in &self.encoder.block {
            for layer in &block.layer {
                h = match layer {
                    T5Layer::SelfAttention(l) => {
                        let a = &l.SelfAttention;
                        let b = match (&bias, &a.relative_attention_bias) {
                            (Some(b), _) => b.clone(),
                            (None, Some(_)) => a.compute_bias(seq, &h.device()),
                            (None, None) => Tensor::zeros([1, a.n_heads, seq, seq], &h.device()),
                        };
                        bias = Some(b.clone());
                        let out = a.forward(l.layer_norm.forward(h.clone()), b, padding.clone());
                        h + out
                    }
                    T5Layer::FeedForward(l) => {
                        h.clone() + l.DenseReluDense.forward(l.layer_norm.forward(h))
                    }
                };
            }
        }
        Ok(self.encoder.final_layer_norm.forward(h))
    }
}

impl<B: Backend> T5Attention<B> {
    /// `o(softmax(q k^T + bias [masked]) v)`, unscaled scores.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `bias`: `[1, heads, seq, seq]`,
    ///   `padding`: `[batch, 1, 1, seq]` (true = hidden key)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        padding: Option<Tensor<B, 4, burn::tensor::Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let heads = self.n_heads;
        let split = |t: Tensor<B, 3>| {
            let inner = t.dims()[2];
            t.reshape([b, s, heads, inner / heads]).swap_dims(1, 2)
        };
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let mut scores = q.matmul(k.swap_dims(2, 3)) + bias;
        if let Some(padding) = padding {
            // transformers adds the dtype's minimum; filling with it gives the same softmax.
            scores = scores.mask_fill(padding.expand([b, heads, s, s]), f32::MIN);
        }
        let out = softmax(scores, 3).matmul(v).swap_dims(1, 2);
        let inner = out.dims()[2] * out.dims()[3];
        self.o.forward(out.reshape([b, s, inner]))
    }

    /// The relative position bias `[1, heads, seq, seq]` of block 0's table.
    pub fn compute_bias(&self, seq: usize, device: &B::Device) -> Tensor<B, 4> {
        let Some(table) = &self.relative_attention_bias else {
            return Tensor::zeros([1, self.n_heads, seq, seq], device);
        };
        let buckets: Vec<i64> = (0..seq * seq)
            .map(|n| {
                let (query, key) = (n / seq, n % seq);
                relative_position_bucket(
                    key as i64 - query as i64,
                    true,
                    self.num_buckets,
                    self.max_distance,
                ) as i64
            })
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [seq, seq]), device);
        table.forward(ids).permute([2, 0, 1]).unsqueeze::<4>()
    }
}

impl<B: Backend> T5DenseFF<B> {
    /// The feed-forward on `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let act = |h: Tensor<B, 3>| match self.activation {
            T5Activation::Relu => relu(h),
            T5Activation::Gelu => gelu(h),
            T5Activation::GeluNew => gelu_tanh(h),
        };
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (_, Some(w0), Some(w1)) => act(w0.forward(x.clone())) * w1.forward(x),
            (Some(wi), _, _) => act(wi.forward(x)),
            _ => unreachable!("T5DenseFF is built with wi or with wi_0 and wi_1"),
        };
        self.wo.forward(h)
    }
}

/// The bucket of a relative position `key - query`, as transformers'
/// `T5Attention._relative_position_bucket` computes it (Mesh TensorFlow's scheme): exact
/// buckets for small distances, logarithmic ones up to `max_distance`, one bucket beyond; in
/// the bidirectional (encoder) case the upper half of the buckets holds positive positions.
/// The logarithm runs in f32, as transformers' does, so boundary cases round the same way.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio / log_range * (num_buckets - max_exact) as f32) as i64;
    (bucket + large.min(num_buckets - 1)) as usize
}
