//! A registry: every blob uploaded at the write (no tag moves), the tags at the commit, each
//! put back if a later output fails ([`crate::registry`]); then, on the same sessions, what
//! hangs off the image (SBOM referrer, signature: [`crate::registry::attach`]).

use super::{Built, Change, Changes, Feedback, Order, Sink, SinkError};
use crate::outcome::Outcome;
use crate::registry::{
    attach, move_tags, upload, Attached, Attachments, PushOutcome, PushedTags, RegistryOptions,
};
use futures_util::future::BoxFuture;
use image_core::image::{media_type, rfc3339};
use image_core::supply::artifact::Descriptor;
use std::sync::Arc;

/// `--push`: the tags name the registries and repositories.
pub struct RegistrySink {
    opts: RegistryOptions,
    feedback: Feedback,
    pushed: PushedTags,
    outcome: Option<PushOutcome>,
    attachments: Attachments,
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
            attachments: Attachments::default(),
            attached: None,
        }
    }

    /// Also attach the SBOM referrer and the signature of `what` once the tags moved
    /// ([`crate::registry::attach`]); their tags are put back with the image's.
    pub fn attaching(mut self, what: Attachments) -> RegistrySink {
        self.attachments = what;
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
            if moved.is_ok() && (self.attachments.sbom.is_some() || self.attachments.key.is_some())
            {
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
        if let Some(a) = &self.attached {
            outcome.sbom_referrer = a.sbom.clone();
            outcome.signatures = a.signatures.clone();
        }
    }

    fn order(&self) -> Order {
        Order::Registry
    }
}

impl RegistrySink {
    /// The SBOM referrer and the signature of the pushed manifest, on the push's sessions.
    async fn attach(&mut self, built: &Built) -> Result<(), crate::registry::RegistryError> {
        let subject = Descriptor::of(media_type::MANIFEST, &built.image.manifest_json());
        let mut what = Vec::new();
        if let Some(sbom) = &self.attachments.sbom {
            what.push(format!("the SBOM ({})", sbom.format.describe()));
        }
        if self.attachments.key.is_some() {
            what.push("a signature".to_string());
        }
        (self.feedback.step)(format!(
            "attaching {} to {}",
            what.join(" and "),
            subject.digest
        ));
        let created = rfc3339(built.image.created);
        let attached = attach(
            built,
            &subject,
            &created,
            &self.attachments,
            &mut self.pushed,
        )
        .await?;
        self.attached = Some(attached);
        Ok(())
    }
}

impl<'a> Change<'a> for PushedTags {
    fn is_empty(&self) -> bool {
        self.moved() == 0
    }

    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(PushedTags::undo(*self))
    }
}
