//! The teacher's noise level of each sample ([`TeacherRule`]), given the student's.
//!
//! The student's levels are those of plain fine-tuning ([`Schedule::sample_levels`]), so the
//! diffusion loss sees the model's ordinary training distribution whatever the rule; the rule
//! only places the teacher below them (specification, "Noise schedules and targets", corrected
//! 2026-12-03).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::Schedule;

/// How the teacher's noise level is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum TeacherRule {
    /// A fixed DDPM timestep for every sample (SD 2.1: 0, the paper's best).
    FixedTimestep(usize),
    /// A fixed flow sigma for every sample.
    FixedSigma(f64),
    /// A draw from the training distribution conditioned to lie below the student's level:
    /// `F^-1(u F(student))`, `u` uniform, `F` the distribution's CDF (project default for flow
    /// models). For DDPM, a uniform timestep below the student's.
    BelowStudent,
}

impl TeacherRule {
    /// The teacher's level for each of the `student` levels of `schedule`, drawing from `rng`
    /// (which should not be the one the student levels came from, so that the rule leaves the
    /// rest of a step's randomness alone).
    pub fn teacher_levels<R: Rng + ?Sized>(
        self,
        schedule: &Schedule,
        student: &[f64],
        rng: &mut R,
    ) -> Result<Vec<f64>> {
        student
            .iter()
            .map(|&level| match (self, schedule) {
                (TeacherRule::BelowStudent, _) => Ok(schedule.sample_level_below(level, rng)),
                (TeacherRule::FixedTimestep(k), _) => Ok(schedule.level_of_timestep(k)),
                (TeacherRule::FixedSigma(s), Schedule::Flow(_)) if (0.0..=1.0).contains(&s) => {
                    Ok(s)
                }
                (TeacherRule::FixedSigma(s), Schedule::Flow(_)) => Err(Error::Config(format!(
                    "teacher rule FixedSigma({s}): a flow sigma lies in [0, 1]"
                ))),
                (TeacherRule::FixedSigma(_), Schedule::Ddpm(_)) => Err(Error::Config(
                    "teacher rule FixedSigma needs a flow schedule; use FixedTimestep".into(),
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{DdpmConfig, FlowConfig};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Two-sample Kolmogorov-Smirnov distance of two sorted samples.
    fn ks_two(a: &[f64], b: &[f64]) -> f64 {
        let (mut i, mut j, mut d) = (0, 0, 0.0f64);
        while i < a.len() && j < b.len() {
            let x = a[i].min(b[j]);
            while i < a.len() && a[i] <= x {
                i += 1;
            }
            while j < b.len() && b[j] <= x {
                j += 1;
            }
            d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
        }
        d
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    /// The student's sigmas are plain fine-tuning's (two-sample KS over 10^5 draws each); the
    /// teacher's lie below them, and `F(teacher) / F(student)` is uniform (one-sample KS),
    /// which is what conditioning the training distribution below the student means.
    #[test]
    fn flow_students_are_plain_and_teachers_conditioned_below() {
        let n = 100_000;
        // Critical values at alpha = 0.001: 1.95 sqrt(2 / n) and 1.95 / sqrt(n).
        let (crit2, crit1) = (1.95 * (2.0 / n as f64).sqrt(), 1.95 / (n as f64).sqrt());
        for shift in [1.0, 3.0] {
            let flow = FlowConfig::new().with_shift(shift).init();
            let schedule = Schedule::Flow(flow.clone());
            let mut rng = StdRng::seed_from_u64(1);
            let student = schedule.sample_levels(&mut rng, n);
            let mut rng_t = StdRng::seed_from_u64(2);
            let teacher = TeacherRule::BelowStudent
                .teacher_levels(&schedule, &student, &mut rng_t)
                .unwrap();
            let plain = schedule.sample_levels(&mut StdRng::seed_from_u64(3), n);
            let d = ks_two(&sorted(student.clone()), &sorted(plain));
            assert!(d < crit2, "shift {shift}: student vs plain KS {d}");
            assert!(teacher.iter().zip(&student).all(|(t, s)| t < s));
            let ratios = sorted(
                teacher
                    .iter()
                    .zip(&student)
                    .map(|(&t, &s)| flow.cdf(t) / flow.cdf(s))
                    .collect(),
            );
            let d1 = ratios
                .iter()
                .enumerate()
                .map(|(i, &r)| (r - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - r))
                .fold(0.0, f64::max);
            assert!(
                d1 < crit1,
                "shift {shift}: F(tea)/F(stu) vs uniform KS {d1}"
            );
        }
        // The rule the specification withdrew fails the first check: the larger of two draws.
        let schedule = Schedule::Flow(FlowConfig::new().with_shift(1.0).init());
        let mut rng = StdRng::seed_from_u64(1);
        let larger: Vec<f64> = (0..n)
            .map(|_| {
                schedule
                    .sample_level(&mut rng)
                    .max(schedule.sample_level(&mut rng))
            })
            .collect();
        let plain = schedule.sample_levels(&mut StdRng::seed_from_u64(3), n);
        assert!(ks_two(&sorted(larger), &sorted(plain)) > 10.0 * crit2);
    }

    #[test]
    fn ddpm_teacher_below_student_and_fixed_rules() {
        let schedule = Schedule::Ddpm(DdpmConfig::new().init());
        let mut rng = StdRng::seed_from_u64(0);
        let student = vec![0.0, 1.0, 2.0, 999.0, 500.0];
        let mut seen = [false; 2];
        for _ in 0..200 {
            let t = TeacherRule::BelowStudent
                .teacher_levels(&schedule, &student, &mut rng)
                .unwrap();
            assert_eq!((t[0], t[1]), (0.0, 0.0));
            assert!(t[2] == 0.0 || t[2] == 1.0);
            seen[t[2] as usize] = true;
            assert!(t[3] < 999.0 && t[4] < 500.0 && t.iter().all(|x| x.fract() == 0.0));
        }
        assert_eq!(seen, [true, true]);
        let fixed = TeacherRule::FixedTimestep(5)
            .teacher_levels(&schedule, &student, &mut rng)
            .unwrap();
        assert_eq!(fixed, vec![5.0; 5]);
        let err = TeacherRule::FixedSigma(0.1)
            .teacher_levels(&schedule, &student, &mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("FixedSigma needs a flow schedule"));
        let flow = Schedule::Flow(FlowConfig::new().init());
        let err = TeacherRule::FixedSigma(1.5)
            .teacher_levels(&flow, &[0.5], &mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("FixedSigma(1.5)"));
    }
}
