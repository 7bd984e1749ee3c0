//! Builds the power-loss shim (`shim/powerloss.c`) as a shared library for LD_PRELOAD and tells
//! the crate where it is (`NATRIUM_POWERLOSS_SHIM`).

use std::path::PathBuf;

fn main() {
    let src = "shim/powerloss.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let lib = out.join("libnatrium_powerloss.so");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wno-format-truncation",
            "-Werror",
            "-o",
        ])
        .arg(&lib)
        .arg(src)
        .args(["-ldl", "-lpthread"])
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler for {src}: {e}"));
    assert!(status.success(), "compiling {src} failed");
    println!("cargo:rustc-env=NATRIUM_POWERLOSS_SHIM={}", lib.display());
}
