//! A registry: every blob uploaded at the write (no tag moves), the tags at the commit, each
//! put back if a later output fails ([`crate::registry`]).

use super::{Built, Feedback, Order, Sink, SinkError};
use crate::outcome::Outcome;
use crate::registry::{move_tags, upload, PushOutcome, PushedTags, RegistryOptions};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// `--push`: the tags name the registries and repositories.
pub struct RegistrySink {
    opts: RegistryOptions,
    feedback: Feedback,
    pushed: PushedTags,
    outcome: Option<PushOutcome>,
}

impl RegistrySink {
    /// Push with `opts` (transport, credentials, bound on silence).
    pub fn new(opts: RegistryOptions, feedback: Feedback) -> RegistrySink {
        RegistrySink {
            opts,
            feedback,
            pushed: PushedTags::default(),
            outcome: None,
        }
    }
}

impl Sink for RegistrySink {
    fn write<'a>(&'a mut self, built: &'a Arc<Built>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            (self.feedback.step)("pushing to the registry".into());
            let progress = self.feedback.bytes("push");
            let outcome = upload(built.clone(), &self.opts, progress, &mut self.pushed).await?;
            self.outcome = Some(outcome);
            Ok(())
        })
    }

    fn commit<'a>(
        &'a mut self,
        built: &'a Arc<Built>,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let Some(outcome) = self.outcome.as_mut() else {
                return Err(SinkError::Internal(
                    "the push committed before it wrote".into(),
                ));
            };
            Ok(move_tags(built, &mut self.pushed, outcome).await?)
        })
    }

    fn undo(&mut self) -> BoxFuture<'_, Vec<String>> {
        let pushed = std::mem::take(&mut self.pushed);
        Box::pin(pushed.undo())
    }

    fn keep(&mut self) {
        self.pushed = PushedTags::default();
    }

    fn changed(&self) -> bool {
        self.pushed.moved() > 0
    }

    fn report(&self, outcome: &mut Outcome) {
        if let Some(p) = &self.outcome {
            outcome.pushed = Some(p.clone());
        }
    }

    fn order(&self) -> Order {
        Order::Registry
    }
}
