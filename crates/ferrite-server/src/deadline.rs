//! The caller's deadline at the gRPC edge, as a tower layer around every service.
//!
//! - A call whose `grpc-timeout` has already passed when it reaches a service is answered
//!   DEADLINE_EXCEEDED and never started.
//! - A call still unanswered when its deadline passes is dropped (its work stops at its next
//!   await) and answered DEADLINE_EXCEEDED, naming the RPC and the timeout.
//! - The deadline is counted from the call's arrival (`services::ArrivalLayer`, installed
//!   outside this layer), before tonic starts its own timer, which answers CANCELLED
//!   ("Timeout expired"): this layer's answer always comes first, so a caller sees the code
//!   gRPC specifies for a missed deadline whichever RPC it called.
//! - A streaming answer is bounded until its response starts, as tonic's timer bounds it;
//!   services that stream apply the deadline to each message themselves.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::Either;

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The layer; see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline(inner)
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S>(S);

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(timeout) = grpc_timeout(req.headers()) else {
            return Either::Left(self.0.call(req));
        };
        let arrived = crate::services::arrived(req.extensions()).unwrap_or_else(Instant::now);
        let Some(deadline) = arrived.checked_add(timeout) else {
            return Either::Left(self.0.call(req));
        };
        let rpc = req.uri().path().to_string();
        if deadline <= Instant::now() {
            let status = tonic::Status::deadline_exceeded(format!(
                "{rpc}: the call's deadline (grpc-timeout {timeout:?}) had passed when it reached the server; it was not started"
            ));
            return Either::Right(Box::pin(std::future::ready(Ok(status.into_http()))));
        }
        let answer = self.0.call(req);
        Either::Right(Box::pin(async move {
            // The answer wins a tie: it is polled before the timer.
            tokio::time::timeout_at(deadline.into(), answer)
                .await
                .unwrap_or_else(|_| {
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "{rpc}: the call's deadline (grpc-timeout {timeout:?}) passed before its answer"
                    ))
                    .into_http())
                })
        }))
    }
}

/// The caller's timeout, from the `grpc-timeout` header (digits and a unit: H M S m u n);
/// `None` without one or when it does not parse (then the call has no deadline, as in tonic).
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::{Layer, Service, ServiceExt};

    /// Answers OK after `delay`, noting that it started.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
        started: Arc<AtomicBool>,
    }

    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<http::Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.started.store(true, Ordering::SeqCst);
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(tonic::Status::ok("").into_http())
            })
        }
    }

    fn slow(delay: Duration) -> (Deadline<Slow>, Arc<AtomicBool>) {
        let started = Arc::new(AtomicBool::new(false));
        let service = DeadlineLayer.layer(Slow {
            delay,
            started: started.clone(),
        });
        (service, started)
    }

    fn call(timeout: Option<&str>, arrived: Option<Instant>) -> http::Request<()> {
        let mut req = http::Request::builder().uri("/ferrite.v1.FeatureService/PushFeatures");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        let mut req = req.body(()).unwrap();
        if let Some(at) = arrived {
            crate::services::stamp(req.extensions_mut(), at);
        }
        req
    }

    fn status(response: &http::Response<()>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a grpc-status header")
    }

    #[tokio::test]
    async fn a_call_still_running_at_its_deadline_answers_deadline_exceeded_naming_the_rpc() {
        let (service, started) = slow(Duration::from_secs(60));
        let answer = service.oneshot(call(Some("30m"), None)).await.unwrap();
        let status = status(&answer);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().starts_with(
                "/ferrite.v1.FeatureService/PushFeatures: the call's deadline (grpc-timeout 30ms) passed"
            ),
            "{}",
            status.message()
        );
        assert!(started.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_on_arrival_is_never_started() {
        let (service, started) = slow(Duration::ZERO);
        let long_ago = Instant::now() - Duration::from_millis(50);
        let answer = service.oneshot(call(Some("20m"), Some(long_ago))).await.unwrap();
        let status = status(&answer);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("it was not started"),
            "{}",
            status.message()
        );
        assert!(
            !started.load(Ordering::SeqCst),
            "the service ran past its deadline"
        );
    }

    #[tokio::test]
    async fn calls_in_time_or_without_a_deadline_get_their_answer() {
        for timeout in [None, Some("5S"), Some("bogus")] {
            let (service, started) = slow(Duration::from_millis(5));
            let answer = service.oneshot(call(timeout, None)).await.unwrap();
            assert_eq!(status(&answer).code(), tonic::Code::Ok, "{timeout:?}");
            assert!(started.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn the_timeout_comes_from_grpc_timeout() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(with("50m"), Some(Duration::from_millis(50)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("3M"), Some(Duration::from_secs(180)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("7u"), Some(Duration::from_micros(7)));
        assert_eq!(with("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("m"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
