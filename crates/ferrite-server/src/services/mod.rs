//! tonic services: each translates wire types, calls the domain, and translates back.

pub mod admin;
pub mod experiments;
pub mod features;
pub mod kserve;
pub mod scoring;
pub mod search;

use std::time::Instant;

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
    arrived(request.extensions()).unwrap_or_else(Instant::now)
}

/// The arrival [`ArrivalLayer`] stamped in a call's extensions.
pub(crate) fn arrived(extensions: &http::Extensions) -> Option<Instant> {
    extensions.get::<Arrived>().map(|a| a.0)
}

/// Stamps `at` as a call's arrival.
pub(crate) fn stamp(extensions: &mut http::Extensions, at: Instant) {
    extensions.insert(Arrived(at));
}

/// The instant a call reached the server, in the request's extensions.
#[derive(Debug, Clone, Copy)]
struct Arrived(Instant);

/// Stamps each call with its arrival. Installed outermost, its `call` runs before tonic
/// starts the timer that cancels a call at its `grpc-timeout` (tonic answers that CANCELLED):
/// a deadline counted from this instant expires no later than tonic's, so the deadline layer
/// (`crate::deadline`) and the services that wait on a deadline answer DEADLINE_EXCEEDED first.
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
        stamp(req.extensions_mut(), Instant::now());
        self.0.call(req)
    }
}

/// The caller's deadline for `request`, counted from its arrival: what a service that picks
/// its own work by the time left (scoring's fallbacks, the model queues) plans with. The
/// deadline layer answers every call that runs past it.
pub(crate) fn call_deadline<T>(request: &Request<T>) -> Option<Instant> {
    let timeout = crate::deadline::grpc_timeout(request.metadata().as_ref())?;
    arrival(request).checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
