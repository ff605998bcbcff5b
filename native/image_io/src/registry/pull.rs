//! Reading from a registry (base images, [`crate::base`]): documents and blobs, with the
//! client, credentials and bounds of a push.

use super::client::{body_stream, client, failure, Registry};
use super::{RegistryError, RegistryOptions};
use bytes::Bytes;
use reqwest::{Method, Response, Url};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A read-only session with one registry host.
pub(crate) struct Puller {
    reg: Registry,
}

impl Puller {
    /// Connect to `host` (`GET /v2/`) with the transport and credentials of `opts`.
    pub(crate) async fn connect(
        host: &str,
        opts: &RegistryOptions,
    ) -> Result<Puller, RegistryError> {
        let http = client(opts)?;
        let store = Arc::new(opts.credential_store());
        Ok(Puller {
            reg: Registry::connect(http, host, opts, store, Arc::new(AtomicU64::new(0))).await?,
        })
    }

    /// `GET /v2/<path>/<rest>` with `Accept: accept`: the response when it succeeded, else the
    /// error its status means (404 is [`RegistryError::NotFound`]).
    pub(crate) async fn get(
        &mut self,
        path: &str,
        rest: &str,
        accept: &str,
    ) -> Result<Response, RegistryError> {
        let url = self.reg.url(path, rest);
        let resp = self
            .reg
            .send(path, Method::GET, &url, |req| {
                Ok(req.header(reqwest::header::ACCEPT, accept))
            })
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(failure(&self.reg.host, path, &url, resp).await)
        }
    }

    /// The body of an answer of [`Puller::get`], each chunk within the stall timeout.
    pub(crate) fn body(
        &self,
        resp: Response,
        step: &str,
    ) -> impl futures_util::Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
        body_stream(resp, self.reg.stall, &self.reg.host, step)
    }

    /// The scheme and host the registry answers at (`http://127.0.0.1:5000/`).
    pub(crate) fn base_url(&self) -> &Url {
        &self.reg.base
    }
}
