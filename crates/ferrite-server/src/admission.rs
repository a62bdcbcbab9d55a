//! Admission control at the gRPC edge, as a tower layer around every service.
//!
//! - Each gRPC service may have at most `server.max_in_flight` calls in flight (or its
//!   `server.max_in_flight_by_service` entry). A call beyond that is answered
//!   RESOURCE_EXHAUSTED at once, never queued: a caller retries elsewhere instead of waiting
//!   behind work the server cannot finish in time. Health and reflection are exempt.
//! - A call is in flight from its request until its response body is finished (a stream
//!   holds its slot while it is open).
//! - Every call, exempt or not, is counted, so that a shutdown can say how many it cut.
//! - tonic answers a request message over `server.max_message_bytes` OUT_OF_RANGE, before
//!   any codec sees a byte; gRPC's convention for a size limit is RESOURCE_EXHAUSTED, so that
//!   status is rewritten here (in the headers of a unary answer, in the trailers of a
//!   stream), with a message naming the config key.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// Services whose calls are never refused: probes and discovery must answer under load.
const EXEMPT: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// One service's limit and its metrics.
struct Gate {
    limit: usize,
    /// Where the limit comes from, for the refusal's message.
    key: String,
    in_flight: AtomicUsize,
    gauge: metrics::Gauge,
    rejected: metrics::Counter,
}

struct Shared {
    gates: HashMap<String, Arc<Gate>>,
    max_message_bytes: usize,
    /// Every call in flight, exempt ones included.
    calls: AtomicUsize,
}

/// The layer; clones share their counts.
#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    /// Limits for `services` (full gRPC names): `overrides` where it names one, else
    /// `default`. An override for a service not in `services` is refused, naming the known ones.
    pub fn new(
        services: &[&str],
        default: usize,
        overrides: &std::collections::BTreeMap<String, std::num::NonZeroUsize>,
        max_message_bytes: usize,
    ) -> anyhow::Result<Self> {
        if let Some(unknown) = overrides.keys().find(|k| !services.contains(&k.as_str())) {
            anyhow::bail!(
                "server.max_in_flight_by_service names {unknown:?}, which is not served; limited services: {}",
                services.join(", ")
            );
        }
        let gates = services
            .iter()
            .map(|&service| {
                let (limit, key) = match overrides.get(service) {
                    Some(n) => (n.get(), format!("server.max_in_flight_by_service.\"{service}\"")),
                    None => (default, "server.max_in_flight".to_string()),
                };
                let label = [("service", service.to_string())];
                let gauge = metrics::gauge!("ferrite_grpc_in_flight", &label);
                // Registered at 0 so that the series exists before the first call.
                gauge.increment(0.0);
                let rejected = metrics::counter!(
                    "ferrite_grpc_rejected_total",
                    "service" => service.to_string(),
                    "reason" => "in_flight"
                );
                rejected.increment(0);
                let gate = Gate {
                    limit,
                    key,
                    in_flight: AtomicUsize::new(0),
                    gauge,
                    rejected,
                };
                (service.to_string(), Arc::new(gate))
            })
            .collect();
        Ok(AdmissionLayer {
            shared: Arc::new(Shared {
                gates,
                max_message_bytes,
                calls: AtomicUsize::new(0),
            }),
        })
    }

    /// Calls in flight now, in every service (exempt ones included).
    pub fn calls_in_flight(&self) -> usize {
        self.shared.calls.load(Ordering::Acquire)
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Holds a call's place until dropped (with the response body).
struct Slot {
    shared: Arc<Shared>,
    /// The gated service; `None` for exempt and unknown paths.
    gate: Option<Arc<Gate>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.calls.fetch_sub(1, Ordering::AcqRel);
        if let Some(gate) = &self.gate {
            gate.in_flight.fetch_sub(1, Ordering::AcqRel);
            gate.gauge.decrement(1.0);
        }
    }
}

/// `/package.Service/Method` → `package.Service`.
fn service_of(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').map_or(path, |(service, _)| service)
}

impl Shared {
    /// A slot for a call to `path`, or the refusal when its service is at its limit.
    fn admit(self: &Arc<Self>, path: &str) -> Result<Slot, tonic::Status> {
        let service = service_of(path);
        let gate = match self.gates.get(service) {
            Some(gate) if !EXEMPT.contains(&service) => gate,
            _ => {
                self.calls.fetch_add(1, Ordering::AcqRel);
                return Ok(Slot {
                    shared: self.clone(),
                    gate: None,
                });
            }
        };
        let taken = gate
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < gate.limit).then_some(n + 1)
            });
        if taken.is_err() {
            gate.rejected.increment(1);
            return Err(tonic::Status::resource_exhausted(format!(
                "{service} already has {} calls in flight, its limit ({} = {}); retry later or elsewhere",
                gate.limit, gate.key, gate.limit
            )));
        }
        gate.gauge.increment(1.0);
        self.calls.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            shared: self.clone(),
            gate: Some(gate.clone()),
        })
    }

    /// Rewrites a status as a client can read it: tonic's OUT_OF_RANGE for an oversize
    /// request message as RESOURCE_EXHAUSTED, and a message too long for a header shortened.
    fn rewrite_status(&self, headers: &mut http::HeaderMap) {
        self.rewrite_oversize(headers);
        shorten_message(headers);
    }

    /// Rewrites tonic's OUT_OF_RANGE for an oversize request message as RESOURCE_EXHAUSTED.
    fn rewrite_oversize(&self, headers: &mut http::HeaderMap) {
        let out_of_range = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
        if !out_of_range {
            return;
        }
        let Some(status) = tonic::Status::from_header_map(headers) else {
            return;
        };
        // tonic's words: "Error, decoded message length too large: found N bytes, the limit is: L bytes".
        let message = status.message();
        if !message.contains("decoded message length too large") {
            return;
        }
        let found = message
            .split("found ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        let size = found.map_or_else(String::new, |n| format!(" of {n} bytes"));
        let rewritten = tonic::Status::resource_exhausted(format!(
            "the request message{size} is over the server's limit of {} bytes (server.max_message_bytes)",
            self.max_message_bytes
        ));
        headers.remove("grpc-message");
        let _ = rewritten.add_header(headers);
    }
}

/// The longest status message sent, in bytes before percent-encoding. Messages quote the
/// caller's values (a model, view or experiment name); a value of many KiB would make the
/// `grpc-message` header too large for common clients (16 KiB by default in gRPC core and
/// hyper), which then see a protocol error instead of the status, or lose the connection.
const MAX_STATUS_MESSAGE: usize = 1024;

/// Shortens a `grpc-message` over [`MAX_STATUS_MESSAGE`] bytes, saying how much was left out.
fn shorten_message(headers: &mut http::HeaderMap) {
    let too_long = headers
        .get("grpc-message")
        .is_some_and(|v| v.len() > MAX_STATUS_MESSAGE);
    if !too_long {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE {
        return;
    }
    let mut cut = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let shortened = format!(
        "{}… ({} more bytes left out)",
        &message[..cut],
        message.len() - cut
    );
    headers.remove("grpc-message");
    let _ = tonic::Status::new(status.code(), shortened).add_header(headers);
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<SlotBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let slot = match self.shared.admit(req.uri().path()) {
            Ok(slot) => slot,
            Err(refused) => {
                let response = refused.into_http::<R>().map(|body| SlotBody {
                    inner: body,
                    shared: None,
                    _slot: None,
                });
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        let shared = self.shared.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            shared.rewrite_status(response.headers_mut());
            Ok(response.map(|body| SlotBody {
                inner: body,
                shared: Some(shared),
                _slot: Some(slot),
            }))
        })
    }
}

/// A response body that holds its call's slot until it is dropped, and rewrites an
/// oversize-request status in its trailers.
pub struct SlotBody<B> {
    inner: B,
    shared: Option<Arc<Shared>>,
    _slot: Option<Slot>,
}

impl<B> Body for SlotBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let Some(shared) = &this.shared else {
            return Poll::Ready(Some(Ok(frame)));
        };
        Poll::Ready(Some(Ok(match frame.into_trailers() {
            Ok(mut trailers) => {
                shared.rewrite_status(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(limit: usize) -> AdmissionLayer {
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert("b.B".to_string(), std::num::NonZeroUsize::new(limit).unwrap());
        AdmissionLayer::new(&["a.A", "b.B", "grpc.health.v1.Health"], 100, &overrides, 4096).unwrap()
    }

    #[test]
    fn services_are_named_from_the_path() {
        assert_eq!(
            service_of("/ferrite.v1.FeatureService/GetOnlineFeatures"),
            "ferrite.v1.FeatureService"
        );
        assert_eq!(service_of("/x"), "x");
        assert_eq!(service_of(""), "");
    }

    #[test]
    fn a_service_at_its_limit_refuses_until_a_slot_is_freed() {
        let l = layer(2);
        let s = &l.shared;
        let first = s.admit("/b.B/M").unwrap();
        let _second = s.admit("/b.B/M").unwrap();
        let refused = s.admit("/b.B/M").err().expect("third call over a limit of 2");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("max_in_flight_by_service.\"b.B\" = 2"),
            "{}",
            refused.message()
        );
        // Other services, exempt ones and unknown paths are not held back by it.
        let _a = s.admit("/a.A/M").unwrap();
        let _health = s.admit("/grpc.health.v1.Health/Check").unwrap();
        let _unknown = s.admit("/no.Such/M").unwrap();
        assert_eq!(l.calls_in_flight(), 5);
        drop(first);
        assert_eq!(l.calls_in_flight(), 4);
        let _again = s.admit("/b.B/M").unwrap();
    }

    #[test]
    fn an_override_for_a_service_not_served_is_refused() {
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert("no.Such".to_string(), std::num::NonZeroUsize::MIN);
        let err = AdmissionLayer::new(&["a.A"], 1, &overrides, 1).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("no.Such") && text.contains("a.A"), "{text}");
    }

    #[test]
    fn a_status_message_too_long_for_a_header_is_shortened() {
        let mut headers = http::HeaderMap::new();
        let long = format!("model {:?} is not in the repository", "q".repeat(20_000));
        tonic::Status::not_found(long).add_header(&mut headers).unwrap();
        shorten_message(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().starts_with("model \"qqq"),
            "{}",
            status.message()
        );
        assert!(
            status.message().ends_with("more bytes left out)"),
            "{}",
            status.message()
        );
        assert!(headers.get("grpc-message").unwrap().len() < 2 * MAX_STATUS_MESSAGE);
        // A short one is left as it is.
        let mut headers = http::HeaderMap::new();
        tonic::Status::not_found("no model \"x\"")
            .add_header(&mut headers)
            .unwrap();
        shorten_message(&mut headers);
        assert_eq!(
            tonic::Status::from_header_map(&headers).unwrap().message(),
            "no model \"x\""
        );
    }

    #[test]
    fn oversize_is_rewritten_and_other_statuses_are_left_alone() {
        let l = layer(1);
        let mut headers = http::HeaderMap::new();
        tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        l.shared.rewrite_oversize(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request message of 5000 bytes is over the server's limit of 4096 bytes (server.max_message_bytes)"
        );

        let mut headers = http::HeaderMap::new();
        tonic::Status::out_of_range("index 7 out of range")
            .add_header(&mut headers)
            .unwrap();
        l.shared.rewrite_oversize(&mut headers);
        assert_eq!(
            tonic::Status::from_header_map(&headers).unwrap().code(),
            tonic::Code::OutOfRange
        );
    }
}
