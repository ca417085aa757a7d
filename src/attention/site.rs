//! Stable identities of attention layers, in diffusers' module-path naming.

use std::fmt;

/// What an attention layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Image tokens attend to image tokens (UNet `attn1`, MMDiT dual-attention `attn2`).
    SelfAttention,
    /// Image tokens attend to text tokens (UNet `attn2`): the maps CTCal supervises.
    Cross,
    /// MMDiT joint attention over `[image tokens ; text tokens]` (diffusers order, image first).
    Joint,
}

/// Which part of a model an attention layer sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockPos {
    /// `down_blocks.{i}` of a UNet.
    Down(usize),
    /// `mid_block` of a UNet.
    Mid,
    /// `up_blocks.{i}` of a UNet.
    Up(usize),
    /// The flat `transformer_blocks` list of an MMDiT.
    Flat,
}

/// The attribute name of the attention module inside its transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `attn` (MMDiT joint attention).
    Attn,
    /// `attn1` (UNet self-attention).
    Attn1,
    /// `attn2` (UNet cross-attention, MMDiT dual self-attention).
    Attn2,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Attn => "attn",
            Slot::Attn1 => "attn1",
            Slot::Attn2 => "attn2",
        }
    }
}

/// One attention layer of a model: a small `Copy` value built at `init`.
///
/// `index` counts the model's attention layers in forward order, so it is stable for a given
/// config; [`path`](Self::path) gives the diffusers module path, e.g.
/// `up_blocks.1.attentions.0.transformer_blocks.0.attn2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionSite {
    /// Position among the model's attention layers, in forward order.
    pub index: usize,
    /// Self, cross or joint attention.
    pub kind: AttentionKind,
    /// Number of heads.
    pub heads: usize,
    /// How many times smaller the query grid is than the model input (1, 2, 4, ...; the patch
    /// size for an MMDiT).
    pub downscale: usize,
    /// The block the layer sits in.
    pub block: BlockPos,
    /// Index within the block's `attentions` list (0 for an MMDiT).
    pub attention: usize,
    /// Index within the `transformer_blocks` list.
    pub transformer_block: usize,
    /// The attention module's attribute name.
    pub slot: Slot,
}

impl AttentionSite {
    /// The diffusers module path of this layer.
    pub fn path(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AttentionSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, t, s) = (self.attention, self.transformer_block, self.slot.name());
        match self.block {
            BlockPos::Down(i) => write!(
                f,
                "down_blocks.{i}.attentions.{a}.transformer_blocks.{t}.{s}"
            ),
            BlockPos::Mid => write!(f, "mid_block.attentions.{a}.transformer_blocks.{t}.{s}"),
            BlockPos::Up(i) => write!(f, "up_blocks.{i}.attentions.{a}.transformer_blocks.{t}.{s}"),
            BlockPos::Flat => write!(f, "transformer_blocks.{t}.{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_diffusers_naming() {
        let site = AttentionSite {
            index: 7,
            kind: AttentionKind::Cross,
            heads: 10,
            downscale: 2,
            block: BlockPos::Up(1),
            attention: 0,
            transformer_block: 0,
            slot: Slot::Attn2,
        };
        assert_eq!(
            site.path(),
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
        );
        let joint = AttentionSite {
            block: BlockPos::Flat,
            transformer_block: 23,
            slot: Slot::Attn,
            ..site
        };
        assert_eq!(joint.path(), "transformer_blocks.23.attn");
        let mid = AttentionSite {
            block: BlockPos::Mid,
            slot: Slot::Attn1,
            ..site
        };
        assert_eq!(
            mid.path(),
            "mid_block.attentions.0.transformer_blocks.0.attn1"
        );
    }
}
