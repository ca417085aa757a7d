//! Layers shared by the UNet and the MMDiT (diffusers `embeddings.py`, `attention.py`).

pub mod activation;
mod embeddings;
mod feed_forward;
mod norm;

pub use activation::{gelu, gelu_tanh, quick_gelu, silu};
pub use embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};
pub use feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
pub use norm::layer_norm;
