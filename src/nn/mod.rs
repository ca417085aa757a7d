//! Layers shared by the UNet and the MMDiT (diffusers `embeddings.py`, `attention.py`).

mod embeddings;
mod feed_forward;

pub use embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};
pub use feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
