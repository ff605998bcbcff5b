//! What a push attaches to the image (`--push` with an SBOM, `--sign-key`): the SBOM referrer
//! and the cosign signature in every repository the image went to ([`crate::registry::attach`]).
//! It commits right after the registry's tags moved (it needs the pushed manifest), and the tags
//! it moves (the referrers fallback index, the `.sig` manifest) are put back with the run's
//! other changes if a later output fails.

use super::{Built, Change, Changes, Feedback, Order, Sink, SinkError};
use crate::outcome::Outcome;
use crate::registry::{attach, Attached, AttachedTags, Attachments, RegistryOptions};
use futures_util::future::BoxFuture;
use image_core::image::{media_type, rfc3339};
use image_core::supply::artifact::Descriptor;
use std::sync::Arc;

/// The SBOM referrer and signature of a pushed image.
pub struct AttachSink {
    opts: RegistryOptions,
    what: Attachments,
    feedback: Feedback,
    attached: Option<Attached>,
}

impl AttachSink {
    /// Attach `what` to the image pushed with `opts`.
    pub fn new(opts: RegistryOptions, what: Attachments, feedback: Feedback) -> AttachSink {
        AttachSink {
            opts,
            what,
            feedback,
            attached: None,
        }
    }
}

impl<'a> Sink<'a> for AttachSink {
    fn commit<'s>(
        &'s mut self,
        built: &'s Arc<Built>,
        outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            if outcome.pushed.is_none() {
                return Err(SinkError::Internal(
                    "the SBOM and signature were to be attached before the image was pushed"
                        .into(),
                ));
            }
            let mut repos: Vec<(String, String)> = Vec::new();
            for t in &built.tags {
                if let Some(host) = &t.domain {
                    let repo = (host.clone(), t.path.clone());
                    if !repos.contains(&repo) {
                        repos.push(repo);
                    }
                }
            }
            let manifest = built.image.manifest_json();
            let subject = Descriptor::of(media_type::MANIFEST, &manifest);
            let mut steps = Vec::new();
            if let Some(sbom) = &self.what.sbom {
                steps.push(format!("the SBOM ({})", sbom.format.describe()));
            }
            if self.what.key.is_some() {
                steps.push("a signature".to_string());
            }
            (self.feedback.step)(format!(
                "attaching {} to {}",
                steps.join(" and "),
                subject.digest
            ));
            let mut tags = AttachedTags::default();
            let result = attach(
                &subject,
                &rfc3339(built.image.created),
                &repos,
                &self.what,
                &self.opts,
                &mut tags,
            )
            .await;
            changes.record(tags);
            self.attached = Some(result?);
            Ok(())
        })
    }

    fn report(&self, outcome: &mut Outcome) {
        if let Some(a) = &self.attached {
            outcome.sbom_referrer = a.sbom.clone();
            outcome.signatures = a.signatures.clone();
        }
    }

    fn order(&self) -> Order {
        Order::Attachments
    }
}

impl<'a> Change<'a> for AttachedTags {
    fn is_empty(&self) -> bool {
        self.moved() == 0
    }

    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(AttachedTags::undo(*self))
    }
}
