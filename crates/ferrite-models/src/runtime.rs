//! Finding and loading the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: nothing links libonnxruntime at build time. The
//! library comes from the pinned `onnxruntime` wheel that the set-up installs into the
//! project virtualenv (`.venv`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::ModelError;

/// The process-wide ONNX Runtime environment. ONNX Runtime can be loaded once per process.
#[derive(Clone)]
pub struct OnnxRuntime {
    env: ort::environment::Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();

impl OnnxRuntime {
    /// Loads ONNX Runtime once per process and returns it; later calls return the same one.
    ///
    /// The library is searched for in this order: `configured` (the `models.onnxruntime_library`
    /// config key), the `ORT_DYLIB_PATH` environment variable, then `.venv` in the current
    /// directory or any of its parents.
    pub fn get(configured: Option<&Path>) -> Result<OnnxRuntime, ModelError> {
        let library = locate(configured)?;
        let loaded = RUNTIME.get_or_init(|| load(&library).map_err(|e| e.to_string()));
        match loaded {
            Ok(rt) => Ok(rt.clone()),
            Err(message) => Err(ModelError::RuntimeLoad {
                path: library,
                message: message.clone(),
            }),
        }
    }

    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// The shared library this process loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

fn load(library: &Path) -> Result<OnnxRuntime, ModelError> {
    let fail = |message: String| ModelError::RuntimeLoad {
        path: library.to_path_buf(),
        message,
    };
    let env = ort::init_from(library)
        .map_err(|e| fail(e.to_string()))?
        .with_name("ferrite")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(library = %library.display(), "loaded ONNX Runtime");
    Ok(OnnxRuntime {
        env,
        library: library.to_path_buf(),
    })
}

/// Where the ONNX Runtime library is, without loading it.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, ModelError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let from_env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    locate_from(configured, from_env, &cwd)
}

fn locate_from(
    configured: Option<&Path>,
    from_env: Option<PathBuf>,
    cwd: &Path,
) -> Result<PathBuf, ModelError> {
    let mut searched = Vec::new();
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        searched.push(format!("models.onnxruntime_library={}", path.display()));
    }
    if let Some(path) = from_env {
        if path.is_file() {
            return Ok(path);
        }
        searched.push(format!("ORT_DYLIB_PATH={}", path.display()));
    }
    for dir in cwd.ancestors() {
        if let Some(found) = in_virtualenv(&dir.join(".venv")) {
            return Ok(found);
        }
    }
    searched.push(format!("{}/.venv and its parents' .venv", cwd.display()));
    Err(ModelError::RuntimeNotFound {
        searched: searched.join(", "),
    })
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`
fn in_virtualenv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    for python in lib.flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut candidates: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        // Prefer the fully versioned name (libonnxruntime.so.1.32.0) over a bare symlink.
        candidates.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        if let Some(found) = candidates.into_iter().next() {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_reported_with_every_place_searched_and_the_install_command() {
        let empty = tempfile::tempdir().unwrap();
        let err = locate_from(
            Some(Path::new("/nonexistent/a.so")),
            Some(PathBuf::from("/nonexistent/b.so")),
            empty.path(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::RuntimeNotFound { .. }), "{msg}");
        for expected in ["/nonexistent/a.so", "/nonexistent/b.so", "scripts/setup.sh"] {
            assert!(msg.contains(expected), "{expected:?} not in {msg}");
        }
    }

    #[test]
    fn the_configured_path_wins_then_the_environment_then_a_parent_virtualenv() {
        let root = tempfile::tempdir().unwrap();
        let capi = root
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let in_venv = capi.join("libonnxruntime.so.1.32.0");
        std::fs::write(&in_venv, b"").unwrap();
        let configured = root.path().join("configured.so");
        std::fs::write(&configured, b"").unwrap();
        let from_env = root.path().join("env.so");
        std::fs::write(&from_env, b"").unwrap();
        let nested = root.path().join("crates/x");
        std::fs::create_dir_all(&nested).unwrap();

        let found = locate_from(Some(&configured), Some(from_env.clone()), &nested).unwrap();
        assert_eq!(found, configured);
        let found = locate_from(None, Some(from_env.clone()), &nested).unwrap();
        assert_eq!(found, from_env);
        let found = locate_from(None, None, &nested).unwrap();
        assert_eq!(found, in_venv);
    }
}
