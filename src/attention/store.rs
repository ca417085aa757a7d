//! [`AttentionStore`]: the hook that collects the maps of selected layers.

use burn::tensor::{Tensor, backend::Backend};

use super::{AttentionHook, AttentionKind, AttentionSite};

/// Chooses attention sites by kind, resolution and diffusers path. Empty criteria match all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteFilter {
    /// Sites of these kinds only (empty: any kind).
    pub kinds: Vec<AttentionKind>,
    /// Sites whose query grid is this many times smaller than the input (empty: any).
    pub downscales: Vec<usize>,
    /// Sites with exactly these diffusers paths (empty: any path).
    pub paths: Vec<String>,
}

impl SiteFilter {
    /// Every site.
    pub fn all() -> Self {
        Self::default()
    }

    /// The cross-attention (`attn2`) sites of a UNet.
    pub fn cross() -> Self {
        Self::default().with_kinds([AttentionKind::Cross])
    }

    /// The joint-attention sites of an MMDiT.
    pub fn joint() -> Self {
        Self::default().with_kinds([AttentionKind::Joint])
    }

    /// Restricts to these kinds.
    pub fn with_kinds(mut self, kinds: impl IntoIterator<Item = AttentionKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Restricts to these downscale factors (resolutions).
    pub fn with_downscales(mut self, downscales: impl IntoIterator<Item = usize>) -> Self {
        self.downscales = downscales.into_iter().collect();
        self
    }

    /// Restricts to these diffusers module paths.
    pub fn with_paths<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.paths = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Whether `site` passes every criterion.
    pub fn matches(&self, site: &AttentionSite) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&site.kind))
            && (self.downscales.is_empty() || self.downscales.contains(&site.downscale))
            && (self.paths.is_empty() || self.paths.iter().any(|p| *p == site.path()))
    }
}

/// One captured map.
#[derive(Debug, Clone)]
pub struct StoredMap<B: Backend> {
    /// The layer it came from.
    pub site: AttentionSite,
    /// `[height, width]` of the query grid.
    pub grid: [usize; 2],
    /// `[batch, heads, queries, keys]`, still on the autodiff graph unless the store detaches.
    pub probs: Tensor<B, 4>,
}

/// A hook that keeps the probabilities of every site its [`SiteFilter`] matches, in forward
/// order.
#[derive(Debug, Clone)]
pub struct AttentionStore<B: Backend> {
    filter: SiteFilter,
    detach: bool,
    maps: Vec<StoredMap<B>>,
}

impl<B: Backend> AttentionStore<B> {
    /// A store for the sites `filter` matches; maps keep their autodiff graph.
    pub fn new(filter: SiteFilter) -> Self {
        Self {
            filter,
            detach: false,
            maps: Vec::new(),
        }
    }

    /// Detaches every stored map from the autodiff graph (for targets such as CTCal's teacher).
    pub fn detached(mut self) -> Self {
        self.detach = true;
        self
    }

    /// The filter in use.
    pub fn filter(&self) -> &SiteFilter {
        &self.filter
    }

    /// The maps captured so far, in forward order.
    pub fn maps(&self) -> &[StoredMap<B>] {
        &self.maps
    }

    /// Takes the captured maps out, leaving the store empty for the next forward.
    pub fn take(&mut self) -> Vec<StoredMap<B>> {
        std::mem::take(&mut self.maps)
    }
}

impl<B: Backend> AttentionHook<B> for AttentionStore<B> {
    fn wants(&self, site: &AttentionSite) -> bool {
        self.filter.matches(site)
    }

    fn on_probs(&mut self, site: &AttentionSite, grid: [usize; 2], probs: Tensor<B, 4>) {
        let probs = if self.detach { probs.detach() } else { probs };
        self.maps.push(StoredMap {
            site: *site,
            grid,
            probs,
        });
    }
}
