//! Records the C++ flags FAISS is compiled with (faiss-sys builds it through CMake, which
//! takes them from the `cc` crate), so that `cpu::check` can tell at run time whether this
//! CPU has the instructions they enable. The lookup order is `cc`'s.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let kind = if target == host { "HOST" } else { "TARGET" };
    let names = [
        format!("CXXFLAGS_{target}"),
        format!("CXXFLAGS_{}", target.replace('-', "_")),
        format!("{kind}_CXXFLAGS"),
        "CXXFLAGS".to_string(),
    ];
    let mut flags = None;
    for name in &names {
        println!("cargo:rerun-if-env-changed={name}");
        if flags.is_none() {
            flags = std::env::var(name).ok();
        }
    }
    println!(
        "cargo:rustc-env=FERRITE_FAISS_CXXFLAGS={}",
        flags.unwrap_or_default()
    );
}
