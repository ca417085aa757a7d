//! Layers shared by the UNet and the MMDiT (diffusers `embeddings.py`, `attention.py`), and
//! host-drawn Gaussian noise.

pub mod activation;
mod conv;
mod embeddings;
mod feed_forward;
mod linear;
mod lora_linear;
mod noise;
mod norm;
mod sampling;

pub use activation::{gelu, gelu_tanh, quick_gelu, silu, silu_kernel};
pub use conv::{conv2d, im2col_conv2d};
pub use embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};
pub use feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
pub use linear::linear;
pub use lora_linear::LoraLinear;
pub use noise::normal_tensor;
pub use norm::{group_norm, layer_norm};
pub use sampling::{Downsample2D, Upsample2D, conv3x3, nearest_resize};
