//! Link flags for the `ferry` binary (also the tests' copy, `ferry-under-test`, built from the
//! same sources for the benchmarks). On Linux with glibc only; other targets keep the defaults.
//!
//! **Position-dependent by default, position-independent with `FERRY_PIE=1`.** A PIE `ferry`
//! has about 51,000 pointers in 0.9 MiB of `.data.rel.ro` that the loader fixes up at every
//! start: about 240 copy-on-write page faults and 0.7 million instructions before `main`, a
//! sixth of a `ferry render` (0.8 ms of about 5 ms, docs/PERFORMANCE.md). The command-line tool
//! is what people run many times a minute, so the default binary is linked `-no-pie` (the code
//! is still compiled position-independent; only the link differs), like the Go binaries of the
//! same ecosystem (`kubectl`, `argo`, `helm`). The server image (deploy/Dockerfile) sets
//! `FERRY_PIE=1`: `ferry serve` reads bytes from the network with C libraries linked in
//! (libgit2, OpenSSL), so there the executable's address is randomised too. Stack, heap,
//! libraries and mappings are randomised either way.
//!
//! A PIE build packs its relative relocations (`DT_RELR`, binutils 2.38+, glibc 2.36+): as a
//! 1.2 MiB `.rela.dyn` table they cost every process about a million instructions and 1.2 MiB
//! of resident pages, as a bitmap a few kilobytes.

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_PIE");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let pie = match std::env::var("FERRY_PIE").as_deref() {
        Ok("1") => true,
        Ok("0") | Ok("") | Err(_) => false,
        Ok(other) => panic!("FERRY_PIE must be 1 (PIE) or 0 (the default), not {other:?}"),
    };
    if pie {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    } else {
        // After rustc's own `-pie`; the compiler driver takes the last of the two.
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
