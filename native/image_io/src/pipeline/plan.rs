//! Stage 4, the plan: what goes into the image, in which layer, and why. From a builder, the
//! plan runs again after each fetch of what it asked for and did not find, until a run asks
//! for nothing (see [`crate::builder::container_fs`]); on the host it runs once.

use super::{Event, Events, Release};
use crate::base::LoadedBase;
use crate::builder::BuilderError;
use crate::error::{Failure, Reason};
use image_core::fs::Fs;
use image_core::layer::Source as EntrySource;
use image_core::plan::{plan, Plan, Settings};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// More fetch rounds than any closure is deep: a plan still asking after this many is a bug.
const MAX_FETCH_ROUNDS: usize = 64;

/// Plan the image of `release` (on `base`, when given) until the plan saw only real answers.
pub async fn plan_until_complete(
    release: &mut Release<'_>,
    base: Option<&Arc<LoadedBase>>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Plan, Failure> {
    events(Event::Step(if base.is_some() {
        "checking the base against the release".into()
    } else {
        "resolving runtime files".into()
    }));
    let lazy = release.builder.is_some();
    let plan = loop {
        let attempt = {
            let (fs, settings, base) =
                (release.fs.clone(), release.settings.clone(), base.cloned());
            tokio::task::spawn_blocking(move || {
                let plan = make_plan(&*fs, &settings, base.as_deref());
                if let (true, Ok(plan)) = (lazy, &plan) {
                    want_sources(&*fs, plan);
                }
                plan
            })
            .await
            .map_err(|e| Failure::internal(format!("the planner failed: {e}")))?
        };
        let Some(b) = release.builder.as_mut() else {
            break attempt?;
        };
        if cancel.is_cancelled() {
            return Err(BuilderError::Cancelled.into());
        }
        if b.fetch_wants().await? == 0 {
            break attempt?;
        }
        if b.rounds > MAX_FETCH_ROUNDS {
            return Err(Failure::new(
                Reason::BuilderError,
                format!(
                    "the runtime files were still not all read from the builder after {MAX_FETCH_ROUNDS} rounds"
                ),
            ));
        }
    };
    for notice in &plan.notices {
        events(Event::Notice(notice.clone()));
    }
    if let Some(b) = &release.builder {
        let (bytes, entries) = b.fs.fetched();
        events(Event::Notice(format!(
            "read {entries} entries ({}) of the builder's filesystem in {} round(s)",
            human_bytes(bytes),
            b.rounds
        )));
    }
    Ok(plan)
}

/// The plan of the image: on its own, or on a base.
fn make_plan(fs: &dyn Fs, settings: &Settings, base: Option<&LoadedBase>) -> Result<Plan, Failure> {
    match base {
        None => Ok(plan(fs, settings)?),
        Some(b) => Ok(b.plan(fs, settings)?),
    }
}

/// Look at each file `plan` will copy, so that a lazily fetched filesystem asks for any it does
/// not have yet before the layers are written.
fn want_sources(fs: &dyn Fs, plan: &Plan) {
    for layer in &plan.layers {
        for entry in &layer.entries {
            if let EntrySource::File(path) = &entry.source {
                let _ = fs.lstat(path);
            }
        }
    }
}

/// A size in the unit that shows it (SI, as `docker images` and the task's summary print):
/// `812 B`, `45.9 kB`, `12.3 MB`, `1.2 GB`.
fn human_bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    for unit in ["kB", "MB", "GB"] {
        // Compared as printed, so 999,950 bytes is `1.0 MB`, not `1000.0 kB`.
        if (value * 10.0).round() < 10_000.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1} TB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_the_unit_that_shows_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(45_900), "45.9 kB");
        assert_eq!(human_bytes(999_949), "999.9 kB");
        assert_eq!(human_bytes(999_950), "1.0 MB");
        assert_eq!(human_bytes(23_456_789), "23.5 MB");
        assert_eq!(human_bytes(1_234_567_890), "1.2 GB");
    }
}
