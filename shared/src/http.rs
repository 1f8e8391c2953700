//! The metrics listener both processes run: `GET /metrics` (Prometheus text format)
//! and `GET /healthz`. Anything else is 404; only GET/HEAD are served.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// Produces the `/metrics` body at each scrape (refreshing gauges first).
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve metrics on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, scrape: Scrape) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(answer(&req, &scrape)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, scrape: &Scrape) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: String, ctype: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    match req.uri().path() {
        "/metrics" => plain(
            StatusCode::OK,
            scrape(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => plain(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}
