//! Whether this CPU runs the FAISS this binary was built with. The workspace builds FAISS
//! for x86-64-v3 (`.cargo/config.toml`); on a CPU without those instructions its first
//! distance computation would die of SIGILL, so the CLI asks here first.

/// The C++ flags FAISS was compiled with (recorded by build.rs).
pub const FAISS_CXXFLAGS: &str = env!("FERRITE_FAISS_CXXFLAGS");

/// The instruction sets a `-m<feature>` flag can enable that this check knows how to probe.
const PROBED: [&str; 6] = ["avx2", "fma", "f16c", "popcnt", "avx512f", "avx512bw"];

/// The features `flags` compiles in (`-mavx2`, ...) that `has` says the CPU lacks.
pub fn missing_features(flags: &str, has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    PROBED
        .into_iter()
        .filter(|feature| {
            let flag = format!("-m{feature}");
            flags.split_whitespace().any(|f| f == flag) && !has(feature)
        })
        .collect()
}

/// Whether this CPU has `feature` (one of [`PROBED`]); other architectures compile no `-m`
/// flags this check looks for.
fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "f16c" => std::arch::is_x86_feature_detected!("f16c"),
            "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        true
    }
}

/// Ok when this CPU has every instruction set FAISS was compiled for; otherwise what is
/// missing and how to build for this machine.
pub fn check() -> Result<(), String> {
    check_with(FAISS_CXXFLAGS, cpu_has)
}

fn check_with(flags: &str, has: impl Fn(&str) -> bool) -> Result<(), String> {
    let missing = missing_features(flags, has);
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this build's FAISS was compiled with `{flags}`, but this CPU lacks {}; rebuild for it \
         with `CXXFLAGS_x86_64_unknown_linux_gnu= cargo build --release` (see .cargo/config.toml)",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_a_compiled_in_feature_is_refused_by_name() {
        let flags = "-mavx2 -mfma -mf16c -mpopcnt";
        let no_fma = |f: &str| f != "fma";
        assert_eq!(missing_features(flags, no_fma), vec!["fma"]);
        let err = check_with(flags, no_fma).unwrap_err();
        assert!(err.contains("lacks fma"), "{err}");
        assert!(err.contains("CXXFLAGS_x86_64_unknown_linux_gnu="), "{err}");
        assert_eq!(check_with(flags, |_| true), Ok(()));
    }

    #[test]
    fn features_not_compiled_in_are_not_required() {
        let nothing = |_: &str| false;
        assert!(missing_features("", nothing).is_empty());
        assert!(missing_features("-march=x86-64 -w", nothing).is_empty());
        // A flag that merely starts like one (-mavx2x) is not that feature.
        assert!(missing_features("-mavx2x -mavx512fp16", nothing).is_empty());
        assert_eq!(missing_features("-mavx512f", nothing), vec!["avx512f"]);
    }
}
