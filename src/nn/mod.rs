//! Layers shared by the UNet and the MMDiT (diffusers `embeddings.py`, `attention.py`), and
//! host-drawn Gaussian noise.

pub mod activation;
mod conv;
mod embeddings;
mod feed_forward;
mod heap;
mod noise;
mod norm;

pub use activation::{gelu, gelu_tanh, quick_gelu, silu};
pub use conv::{conv2d, im2col_conv2d};
pub use embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};
pub use feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
pub use heap::retain_freed_memory;
pub use noise::normal_tensor;
pub use norm::layer_norm;
