//! What the relay serves from its own files before anything else sees the request: the
//! built-in scripts (`http/client_js.rs`; `/socket.io/socket.io.min.js` lies under the
//! Socket.IO service's path, so it must be answered before that service) and the kiosk app
//! under `site.path` (`http/site.rs`). Everything else goes on to `inner`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::client_js;
use super::site::{Site, SiteBody};
use crate::connection::ConnectionHandle;

/// The body of an answer: `inner`'s, or one of the relay's own files.
pub type LocalBody<B> = Either<B, SiteBody>;

/// A service that answers the built-in scripts and the kiosk app, and passes the rest on.
#[derive(Debug, Clone)]
pub struct LocalFiles<S> {
    inner: S,
    site: Arc<Site>,
}

impl<S> LocalFiles<S> {
    pub fn new(inner: S, site: Arc<Site>) -> Self {
        Self { inner, site }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for LocalFiles<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<LocalBody<B>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let path = req.uri().path();
        if let Some(answer) = client_js::serve(req.method(), path, req.headers()) {
            let answer = answer.map(|body: Full<Bytes>| Either::Right(Either::Left(body)));
            return Box::pin(async move { Ok(answer) });
        }
        if self.site.owns(path) {
            let site = self.site.clone();
            return Box::pin(async move {
                let (parts, _body) = req.into_parts();
                let busy = parts.extensions.get::<ConnectionHandle>().map(|c| c.busy());
                let answer = site
                    .serve(&parts.method, &parts.uri, &parts.headers, busy)
                    .await;
                Ok(answer.map(Either::Right))
            });
        }
        let future = self.inner.call(req);
        Box::pin(async move { Ok(future.await?.map(Either::Left)) })
    }
}
