//! The CTCal alignment loss on per-noun maps (`../shared/docs/ctcal-method.md`, "The loss
//! terms").
//!
//! Per sample, with `S_i` / `T_i` the student / teacher map of noun `i` and `An = A / max(A)`:
//! - pixel: `mean_i MSE(An(S_i), An(T_i))`
//! - semantic: `mean_i MSE(enc(An(S_i)), enc(An(T_i)))`
//! - reconstruction: `mean_i MSE(dec(enc(An(T_i))), An(T_i))`
//! - balance: `mean_i ReLU(1 - tau - peak(S_i) / (P + 1e-8))` with `P = max_j peak(S_j)`
//!   detached: the paper's `ReLU(P - peak_i - tau)` measured in units of the strongest
//!   subject's peak, so `tau` is a fraction of it and the term (in `[0, 1 - tau]`) means the same
//!   whatever the number of text tokens, heads and layers the maps were averaged over
//!
//! `L_b = l1 pixel + l2 semantic + l3 recon + l4 balance`; the batch loss is
//! `mean_b w_b L_b` with `L_b = 0` for a sample without nouns.

use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};

use super::maps::resize;
use super::{CtcalConfig, MapAutoEncoder};
use crate::error::{Error, Result};

/// Added to a map's maximum before normalising, so an all-zero map stays finite.
pub const NORM_EPS: f64 = 1e-8;

/// The CTCal loss of a batch and its unweighted parts.
#[derive(Debug, Clone)]
pub struct CtcalLoss<B: Backend> {
    /// `mean_b w_b L_b` (before `lambda_ctcal`), on the autodiff graph.
    pub loss: Tensor<B, 1>,
    /// Parts averaged over the samples that have nouns, as numbers for logging:
    /// `[pixel, semantic, reconstruction, balance]`. Zero when no sample has nouns.
    pub parts: [f64; 4],
    /// Number of samples with at least one noun.
    pub samples_with_nouns: usize,
}

/// Normalises each `[n, h, w]` map to maximum one; also returns the maxima `[n]`.
pub fn normalise<B: Backend>(maps: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 1>) {
    let [n, h, w] = maps.dims();
    let peak = maps.clone().reshape([n, h * w]).max_dim(1); // [n, 1]
    let normed = maps / (peak.clone() + NORM_EPS).reshape([n, 1, 1]);
    (normed, peak.reshape([n]))
}

/// The loss of one sample: `[pixel, semantic, recon, balance]` as scalar tensors.
///
/// # Shapes
/// - `student`, `teacher`: `[nouns, h, w]` (teacher detached by the caller)
pub fn sample_terms<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    ae: &MapAutoEncoder<B>,
    config: &CtcalConfig,
) -> [Tensor<B, 1>; 4] {
    let [n, _, _] = student.dims();
    let (s_norm, s_peak) = normalise(student);
    let (t_norm, _) = normalise(teacher);
    let pixel = (s_norm.clone() - t_norm.clone()).powi_scalar(2).mean();

    let side = ae.input_size;
    let to_ae = |m: Tensor<B, 3>| {
        let [n, h, w] = m.dims();
        resize(m.reshape([n, 1, h, w]), [side, side])
    };
    let (s_in, t_in) = (to_ae(s_norm), to_ae(t_norm));
    let s_code = ae.encode(s_in);
    let t_code = ae.encode(t_in.clone());
    let semantic = (s_code - t_code.clone()).powi_scalar(2).mean();
    let recon = (ae.decode(t_code) - t_in).powi_scalar(2).mean();

    // Relative to the strongest subject's (detached) peak: scale-free, see the module doc.
    let strongest = s_peak.clone().max().detach().add_scalar(NORM_EPS); // [1]
    let gap = (s_peak / strongest.expand([n]))
        .neg()
        .add_scalar(1.0 - config.tau);
    let balance = relu(gap).mean();
    [pixel, semantic, recon, balance]
}

/// The CTCal loss of a batch from per-sample noun maps.
///
/// `weights[b]` is the timestep weight `w(t_stu)` of sample `b`. Student and teacher must have
/// the same nouns and map sizes; mismatches are errors naming the sample and shapes.
pub fn ctcal_loss<B: Backend>(
    student: &[Option<Tensor<B, 3>>],
    teacher: &[Option<Tensor<B, 3>>],
    weights: &[f64],
    ae: &MapAutoEncoder<B>,
    config: &CtcalConfig,
    device: &B::Device,
) -> Result<CtcalLoss<B>> {
    let batch = student.len();
    if teacher.len() != batch || weights.len() != batch {
        return Err(Error::Input(format!(
            "{batch} student samples, {} teacher samples, {} weights",
            teacher.len(),
            weights.len()
        )));
    }
    let mut total = Tensor::<B, 1>::zeros([1], device);
    // Detached running sum of the four terms, read back once (not one device sync per term).
    let mut part_sums = Tensor::<B, 1>::zeros([4], device);
    let mut count = 0;
    for (b, (s, t)) in student.iter().zip(teacher).enumerate() {
        let (s, t) = match (s, t) {
            (None, None) => continue,
            (Some(s), Some(t)) if s.dims() == t.dims() => (s.clone(), t.clone()),
            (s, t) => {
                return Err(Error::Input(format!(
                    "sample {b}: student maps {:?} and teacher maps {:?} differ",
                    s.as_ref().map(|x| x.dims()),
                    t.as_ref().map(|x| x.dims())
                )));
            }
        };
        let terms = sample_terms(s, t.detach(), ae, config);
        let lambdas = [
            config.pixel_weight,
            config.semantic_weight,
            config.recon_weight,
            config.balance_weight,
        ];
        part_sums = part_sums + Tensor::cat(terms.iter().map(|t| t.clone().detach()).collect(), 0);
        let mut sample_loss = Tensor::<B, 1>::zeros([1], device);
        for (term, l) in terms.into_iter().zip(lambdas) {
            sample_loss = sample_loss + term.mul_scalar(l);
        }
        total = total + sample_loss.mul_scalar(weights[b]);
        count += 1;
    }
    let mut parts = [0f64; 4];
    if count > 0 {
        let sums = part_sums.into_data().convert::<f64>();
        for (p, v) in parts.iter_mut().zip(sums.iter::<f64>()) {
            *p = v / count as f64;
        }
    }
    Ok(CtcalLoss {
        loss: total.div_scalar(batch.max(1) as f64),
        parts,
        samples_with_nouns: count,
    })
}
