//! A registry: every blob uploaded at the write (no tag moves), the tags at the commit, each
//! put back if a later output fails ([`crate::registry`]); then, on the same sessions, what
//! hangs off the images (each image's SBOM referrer, the signatures:
//! [`crate::registry::attach`]).

use super::{Built, Change, Changes, Feedback, Order, Sink, SinkError};
use crate::outcome::Outcome;
use crate::registry::{
    attach, move_tags, upload, Attached, PushOutcome, PushedTags, RegistryOptions,
};
use futures_util::future::BoxFuture;
use image_core::image::rfc3339;
use image_core::supply::signing::SigningKey;
use std::sync::Arc;

/// `--push`: the tags name the registries and repositories.
pub struct RegistrySink {
    opts: RegistryOptions,
    feedback: Feedback,
    pushed: PushedTags,
    outcome: Option<PushOutcome>,
    key: Option<Arc<SigningKey>>,
    attached: Option<Attached>,
}

impl RegistrySink {
    /// Push with `opts` (transport, credentials, bound on silence).
    pub fn new(opts: RegistryOptions, feedback: Feedback) -> RegistrySink {
        RegistrySink {
            opts,
            feedback,
            pushed: PushedTags::default(),
            outcome: None,
            key: None,
            attached: None,
        }
    }

    /// Also sign, with `key`, what the tags name (and with several platforms each platform's
    /// manifest) once the tags moved ([`crate::registry::attach`], which also attaches each
    /// image's SBOM, [`Built::sboms`]); the `.sig` tags are put back with the image's.
    pub fn signing(mut self, key: Option<Arc<SigningKey>>) -> RegistrySink {
        self.key = key;
        self
    }
}

impl<'a> Sink<'a> for RegistrySink {
    fn write<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            (self.feedback.step)("pushing to the registry".into());
            let progress = self.feedback.bytes("push");
            let outcome = upload(built.clone(), &self.opts, progress, &mut self.pushed).await?;
            self.outcome = Some(outcome);
            Ok(())
        })
    }

    fn commit<'s>(
        &'s mut self,
        built: &'s Arc<Built>,
        _outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            let Some(outcome) = self.outcome.as_mut() else {
                return Err(SinkError::Internal(
                    "the push committed before it wrote".into(),
                ));
            };
            let mut moved = move_tags(built, &mut self.pushed, outcome).await;
            if moved.is_ok() && (!built.sboms.is_empty() || self.key.is_some()) {
                moved = self.attach(built).await;
            }
            changes.record(std::mem::take(&mut self.pushed));
            Ok(moved?)
        })
    }

    fn report(&self, outcome: &mut Outcome) {
        if let Some(p) = &self.outcome {
            outcome.pushed = Some(p.clone());
        }
        // What the tags name at the top level; with several platforms, each platform's manifest
        // in its entry.
        let (Some(a), Some(p)) = (&self.attached, &self.outcome) else {
            return;
        };
        for to in &a.subjects {
            if to.subject == p.manifest_digest {
                outcome.sbom_referrer = to.sbom.clone();
                outcome.signatures = to.signatures.clone();
            } else if let Some(image) = outcome
                .platforms
                .iter_mut()
                .find(|i| i.manifest_digest == to.subject)
            {
                image.sbom_referrer = to.sbom.clone();
                image.signatures = to.signatures.clone();
            }
        }
    }

    fn order(&self) -> Order {
        Order::Registry
    }
}

impl RegistrySink {
    /// Each image's SBOM referrer and the signatures, on the push's sessions.
    async fn attach(&mut self, built: &Built) -> Result<(), crate::registry::RegistryError> {
        (self.feedback.step)(attaching_step(built, self.key.is_some()));
        let created = rfc3339(built.image.created);
        let attached = attach(built, &created, self.key.as_deref(), &mut self.pushed).await?;
        self.attached = Some(attached);
        Ok(())
    }
}

/// The step line of the attachments: `attaching the SBOM (SPDX 2.3) and a signature to
/// sha256:…`, or with several platforms `… each platform's SBOM … and signatures to the index
/// sha256:… and its 2 images`.
fn attaching_step(built: &Built, signing: bool) -> String {
    let format = built.sboms.first().map(|s| s.sbom.format.describe());
    let (sbom, signature, target) = match &built.index {
        None => (
            "the SBOM",
            "a signature",
            built.image.manifest_digest().to_string(),
        ),
        Some(index) => (
            "each platform's SBOM",
            "signatures",
            format!(
                "the index {} and its {} images",
                index.digest(),
                index.images().len()
            ),
        ),
    };
    let mut what = Vec::new();
    if let Some(format) = format {
        what.push(format!("{sbom} ({format})"));
    }
    if signing {
        what.push(signature.to_string());
    }
    format!("attaching {} to {target}", what.join(" and "))
}

impl<'a> Change<'a> for PushedTags {
    fn is_empty(&self) -> bool {
        self.moved() == 0
    }

    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(PushedTags::undo(*self))
    }
}
