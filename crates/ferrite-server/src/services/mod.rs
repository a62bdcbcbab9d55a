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
    let models = state.models.clone();
    tokio::task::spawn_blocking(move || models.load(&name))
        .await
        .map_err(|e| Status::internal(format!("load task failed: {e}")))?
        .map_err(ApiError::from)?;
    Ok(())
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
}
