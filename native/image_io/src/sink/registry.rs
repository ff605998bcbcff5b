//! A registry: every blob uploaded at the write (no tag moves), the tags at the commit, each
//! put back if a later output fails ([`crate::registry`]).

use super::{Built, Change, Changes, Feedback, Order, Sink, SinkError};
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
            let moved = move_tags(built, &mut self.pushed, outcome).await;
            changes.record(std::mem::take(&mut self.pushed));
            Ok(moved?)
        })
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

impl<'a> Change<'a> for PushedTags {
    fn is_empty(&self) -> bool {
        self.moved() == 0
    }

    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(PushedTags::undo(*self))
    }
}
