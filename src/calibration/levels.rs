//! The teacher's and the student's noise levels of each sample ([`TeacherRule`]).

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
    /// Draw two levels from the training distribution; the smaller goes to the teacher and the
    /// larger to the student (project default for flow models).
    SmallerOfTwo,
}

impl TeacherRule {
    /// Draws `(student, teacher)` levels for a batch of `batch` samples from `schedule`.
    pub fn sample_levels<R: Rng + ?Sized>(
        self,
        schedule: &Schedule,
        rng: &mut R,
        batch: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let mut student = Vec::with_capacity(batch);
        let mut teacher = Vec::with_capacity(batch);
        for _ in 0..batch {
            let a = schedule.sample_level(rng);
            let t = match (self, schedule) {
                (TeacherRule::SmallerOfTwo, _) => {
                    let b = schedule.sample_level(rng);
                    student.push(a.max(b));
                    teacher.push(a.min(b));
                    continue;
                }
                (TeacherRule::FixedTimestep(k), _) => schedule.level_of_timestep(k),
                (TeacherRule::FixedSigma(s), Schedule::Flow(_)) => s,
                (TeacherRule::FixedSigma(_), Schedule::Ddpm(_)) => {
                    return Err(Error::Config(
                        "teacher rule FixedSigma needs a flow schedule; use FixedTimestep".into(),
                    ));
                }
            };
            student.push(a);
            teacher.push(t);
        }
        Ok((student, teacher))
    }
}
