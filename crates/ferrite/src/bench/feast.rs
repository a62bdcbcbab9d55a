//! The HTTP calls `ferrite bench` makes to Feast's feature server (`feast serve`), so that its
//! online reads are measured by the same load generator, schedule and report as Ferrite's.
//!
//! HTTP/1.1 with keep-alive through hyper's pooled client: a connection answers one call at a
//! time, so the pool holds one connection per call in flight and reuses it for the next.
//! Requests are JSON built from a prefix and a suffix made once, with only the user id written
//! per call; of each answer only the status and whether each value is present are read.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::bytes::Bytes;
use serde::Deserialize;

use super::rpc::Outcome;

/// The features `--rpc features` asks Ferrite for, by the same references.
pub const FEATURES: [&str; 2] = ["user_stats:*", "user_profile:*"];

/// The entity key of the request (Feast answers it as a column of its own, which is not a
/// feature and is not counted).
const ENTITY: &str = "user_id";

/// A client of one `feast serve`.
pub struct FeastClient {
    client: Client<HttpConnector, Full<Bytes>>,
    features_uri: Uri,
    health_uri: Uri,
    /// `{"features": [...], "entities": {"user_id": [` and `]}}`.
    prefix: String,
    suffix: &'static str,
}

impl FeastClient {
    /// A client of the server at `addr` asking for `FEATURES` as defined in `feature_repo`
    /// (`features/*.toml`), each named `view:feature` as Feast names them.
    pub fn new(addr: SocketAddr, feature_repo: &Path) -> anyhow::Result<Self> {
        let registry = ferrite_features::Registry::load(feature_repo, None)
            .map_err(|problems| anyhow::anyhow!("{problems}"))
            .with_context(|| format!("--feature-repo {}", feature_repo.display()))?;
        let refs: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
        let names = registry
            .resolve_refs(&refs)
            .map_err(|e| anyhow::anyhow!("--feature-repo {}: {e}", feature_repo.display()))?
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>();
        Ok(Self::with_features(addr, &names))
    }

    /// A client asking for these features (`view:feature`).
    pub fn with_features(addr: SocketAddr, features: &[String]) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            // Every connection the callers opened stays open for the next call.
            .pool_idle_timeout(None)
            .build(connector);
        let prefix = format!(
            "{{\"features\":{},\"entities\":{{\"{ENTITY}\":[",
            serde_json::to_string(features).expect("strings serialize")
        );
        let uri = |path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .expect("a socket address makes a valid URI")
        };
        FeastClient {
            client,
            features_uri: uri("/get-online-features"),
            health_uri: uri("/health"),
            prefix,
            suffix: "]}}",
        }
    }

    /// `POST /get-online-features` for user 1,000,000 + key (the sample data's ids, as
    /// `--rpc features` sends them).
    pub async fn features(&self, key: u64) -> Result<Outcome, tonic::Status> {
        let body = format!("{}{}{}", self.prefix, 1_000_000 + key, self.suffix);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.features_uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let body = self.send(request).await?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| tonic::Status::internal(format!("an answer that is not Feast's JSON: {e}")))?;
        let (mut values, mut present) = (0, 0);
        for (i, column) in answer.results.iter().enumerate() {
            if answer.metadata.feature_names.get(i).map(String::as_str) == Some(ENTITY) {
                continue;
            }
            for (s, v) in column.statuses.iter().zip(&column.values) {
                values += 1;
                present += u32::from(s == "PRESENT" && v.is_some());
            }
        }
        Ok(Outcome {
            values,
            present,
            ..Outcome::default()
        })
    }

    /// `GET /health`: Feast's empty call.
    pub async fn health(&self) -> Result<Outcome, tonic::Status> {
        let request = Request::builder()
            .uri(self.health_uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        self.send(request).await?;
        Ok(Outcome::default())
    }

    /// Sends a request and reads the whole answer; an answer other than 200 is an error.
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Bytes, tonic::Status> {
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("HTTP: {e}")))?;
        let status = answer.status();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("HTTP body: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(tonic::Status::new(code_of(status), format!("HTTP {status}")));
        }
        Ok(body)
    }
}

/// gRPC's mapping of HTTP statuses to codes (grpc/doc/http-grpc-status-mapping.md), so that a
/// report counts HTTP errors by the same names as gRPC ones: a 500 is `Unknown`.
fn code_of(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

/// The part of Feast's answer the load generator reads. Feast 0.63 answers
/// `{"metadata": {"feature_names": [...]}, "results": [{"values": [...], "statuses": [...],
/// "event_timestamps": [...]}, ...]}`, one result per name (the entity key first).
#[derive(Deserialize)]
struct Answer {
    metadata: Metadata,
    results: Vec<Column>,
}

#[derive(Deserialize)]
struct Metadata {
    feature_names: Vec<String>,
}

/// A value counts as present when its status says so and it is not null: Feast 0.63 answers
/// an entity it has no row for with `PRESENT` and null values.
#[derive(Deserialize)]
struct Column {
    /// Null or not; the value itself is skipped.
    values: Vec<Option<serde::de::IgnoredAny>>,
    statuses: Vec<String>,
}
