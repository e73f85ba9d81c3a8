//! Compresses the scripts the relay serves from copies built into the binary (`client/`:
//! socket.io-client's bundle and relay-client.js) with `gzip -9`, into `OUT_DIR`, where
//! `src/http/client_js.rs` includes them: 26 KB in the binary instead of 83 KB, which the
//! release binaries' 4 MiB budget needs. Browsers take them as sent (`Content-Encoding: gzip`).

use std::path::PathBuf;
use std::process::Command;

/// The files compressed, relative to the package, and the name of each compressed copy.
const SCRIPTS: [(&str, &str); 3] = [
    ("client/vendor/socket.io.min.js", "socket.io.min.js.gz"),
    ("client/relay-client.js", "relay-client.js.gz"),
    (
        "client/relay-client.classic.js",
        "relay-client.classic.js.gz",
    ),
];

fn main() {
    let package = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    for (source, name) in SCRIPTS {
        println!("cargo:rerun-if-changed={source}");
        let path = package.join(source);
        // -n: no name or time in the header, so the same file gives the same bytes.
        let output = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run gzip to compress {source} (install gzip): {e}"));
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "gzip could not compress {source}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(out.join(name), &output.stdout)
            .unwrap_or_else(|e| panic!("cannot write {name} into OUT_DIR: {e}"));
    }
}
