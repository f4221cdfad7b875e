//! Link flags for the `ferry` binary (also the tests' copy, `ferry-under-test`, built from the
//! same sources for the benchmarks).
//!
//! On Linux with glibc, relative relocations are packed (`DT_RELR`, binutils 2.38+, glibc
//! 2.36+): the binary is position-independent, so the loader fixes up about 51,000 pointers
//! at every start; as a 1.2 MiB `.rela.dyn` table that cost each `ferry` process about a
//! million instructions and 1.2 MiB of resident pages, as a bitmap a few kilobytes
//! (docs/PERFORMANCE.md). Address-space layout randomisation stays on.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
