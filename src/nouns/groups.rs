//! Noun token groups: which text-token positions of a caption form each supervised noun.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The nouns of one caption, each a list of token positions in the text-encoder sequence
/// (position 0 is the start token, so the first word starts at 1). A noun split into several
/// BPE tokens lists all of them; its map is the sum of their maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NounGroups(pub Vec<Vec<usize>>);

impl NounGroups {
    /// No nouns: the sample contributes only the diffusion loss.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Number of nouns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no noun.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks every group is non-empty and every position lies below `tokens`, naming the
    /// sample, noun and position otherwise.
    pub fn check(&self, sample: usize, tokens: usize) -> Result<()> {
        self.check_within(tokens).map_err(|e| match e {
            Error::Input(message) => Error::Input(format!("sample {sample}: {message}")),
            other => other,
        })
    }

    /// [`check`](Self::check) for one caption: names the noun and position.
    pub fn check_within(&self, tokens: usize) -> Result<()> {
        for (i, group) in self.0.iter().enumerate() {
            if group.is_empty() {
                return Err(Error::Input(format!("noun {i} has no token positions")));
            }
            if let Some(&p) = group.iter().find(|&&p| p >= tokens) {
                return Err(Error::Input(format!(
                    "noun {i} uses token position {p}, but the text has {tokens} tokens"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_beyond_the_text_are_named() {
        let nouns = NounGroups(vec![vec![2], vec![5, 6]]);
        assert!(nouns.check(0, 7).is_ok());
        let err = nouns.check(3, 6).unwrap_err().to_string();
        assert!(
            err.contains("sample 3: noun 1 uses token position 6, but the text has 6 tokens"),
            "{err}"
        );
        let err = NounGroups(vec![vec![]])
            .check(0, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("noun 0 has no token positions"), "{err}");
    }
}
