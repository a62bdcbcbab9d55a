//! tonic services: each translates wire types, calls the domain, and translates back.

pub mod admin;
pub mod experiments;
pub mod features;
pub mod kserve;
pub mod scoring;
pub mod search;

use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::AppState;
use crate::status::ApiError;

/// Loads (or reloads) a model off the async workers: loading reads files and runs a warm-up.
/// Shared by the KServe repository extension and the admin service.
pub(crate) async fn load_model(state: &AppState, name: String) -> Result<(), Status> {
    model_control(state, "load")?;
    let models = state.models.clone();
    tokio::task::spawn_blocking(move || models.load(&name))
        .await
        .map_err(|e| Status::internal(format!("load task failed: {e}")))?
        .map_err(ApiError::from)?;
    Ok(())
}

/// Refuses a model load or unload (`what`) unless `models.control_mode` allows them.
pub(crate) fn model_control(state: &AppState, what: &str) -> Result<(), Status> {
    let mode = state.config.models.control_mode;
    if mode.allows_rpcs() {
        return Ok(());
    }
    Err(ApiError::ModelControlDisabled(format!(
        "model {what} refused: model control is disabled (models.control_mode = \"{}\"); \
         set models.control_mode = \"explicit\" or \"poll_and_explicit\" to load and unload models through the API",
        mode.as_str()
    ))
    .into())
}

/// When a call arrived, as [`ArrivalLayer`] saw it; now when the layer is not installed.
pub(crate) fn arrival<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |a| a.0)
}

/// The instant a call reached the server, in the request's extensions.
#[derive(Debug, Clone, Copy)]
struct Arrived(Instant);

/// Stamps each call with its arrival. Installed outermost, its `call` runs before tonic
/// starts the timer that cancels a call at its `grpc-timeout` (tonic answers that CANCELLED):
/// a deadline counted from this instant expires no later than tonic's, so a service that
/// waits until it can answer DEADLINE_EXCEEDED itself, naming what it was waiting for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArrivalLayer;

impl<S> tower::Layer<S> for ArrivalLayer {
    type Service = Arrival<S>;

    fn layer(&self, inner: S) -> Arrival<S> {
        Arrival(inner)
    }
}

#[derive(Debug, Clone)]
pub struct Arrival<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Arrival<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        req.extensions_mut().insert(Arrived(Instant::now()));
        self.0.call(req)
    }
}

/// The caller's deadline for `request`, counted from its arrival.
pub(crate) fn call_deadline<T>(request: &Request<T>) -> Option<Instant> {
    deadline(request, arrival(request))
}

/// Runs `work` within the caller's deadline: not started once the deadline has passed, and
/// answered DEADLINE_EXCEEDED naming `what` when it passes first. Counted from the arrival,
/// this deadline expires no later than tonic's own timer, which would answer CANCELLED.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    what: &str,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(deadline) = deadline else {
        return work.await;
    };
    let passed = || Status::deadline_exceeded(format!("{what}: the call's deadline (grpc-timeout) passed"));
    if deadline <= Instant::now() {
        return Err(passed());
    }
    tokio::time::timeout_at(deadline.into(), work)
        .await
        .unwrap_or_else(|_| Err(passed()))
}

/// The caller's deadline, from the `grpc-timeout` header (digits and a unit: H M S m u n).
pub(crate) fn deadline<T>(request: &Request<T>, received: Instant) -> Option<Instant> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    received.checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the arrival a call carries, after the time its service starts work on it.
    struct Echo;

    impl tower::Service<http::Request<()>> for Echo {
        type Response = (Instant, Instant);
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(Instant, Instant), Self::Error>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            let request = Request::from_http(req);
            std::future::ready(Ok((arrival(&request), started)))
        }
    }

    #[test]
    fn a_call_carries_the_instant_it_passed_the_arrival_layer() {
        use tower::{Layer, Service};
        let mut stamped = ArrivalLayer.layer(Echo);
        let before = Instant::now();
        let (arrived, started) = stamped.call(http::Request::new(())).into_inner().unwrap();
        assert!(
            before <= arrived && arrived <= started,
            "stamped before the service ran"
        );
        // Without the layer, a call's arrival is when it is asked for.
        let (arrived, started) = Echo.call(http::Request::new(())).into_inner().unwrap();
        assert!(arrived > started);
    }

    #[test]
    fn the_deadline_comes_from_grpc_timeout() {
        let at = Instant::now();
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            deadline(&r, at)
        };
        assert_eq!(with("50m"), Some(at + Duration::from_millis(50)));
        assert_eq!(with("2S"), Some(at + Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(at + Duration::from_secs(3600)));
        assert_eq!(with("7u"), Some(at + Duration::from_micros(7)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("m"), None);
        assert_eq!(deadline(&Request::new(()), at), None);
    }

    #[tokio::test]
    async fn work_past_its_deadline_answers_deadline_exceeded_and_late_work_never_starts() {
        let soon = Some(Instant::now() + Duration::from_millis(20));
        let status = within(
            soon,
            "pushing features",
            std::future::pending::<Result<(), Status>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().starts_with("pushing features:"),
            "{}",
            status.message()
        );

        let started = std::sync::atomic::AtomicBool::new(false);
        let work = async {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        let passed = Some(Instant::now() - Duration::from_millis(1));
        let status = within(passed, "reading online features", work).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            !started.load(std::sync::atomic::Ordering::SeqCst),
            "work started past its deadline"
        );

        let answer = within(None, "x", async { Ok::<_, Status>(7) }).await.unwrap();
        assert_eq!(answer, 7);
        let far = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(within(far, "x", async { Ok::<_, Status>(8) }).await.unwrap(), 8);
    }
}
