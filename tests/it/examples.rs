//! The programs in `examples/` run against the real services (cargo builds them with the tests).

use std::path::PathBuf;

use crate::harness::TestDb;
use crate::harness::redis::redis_url;

/// The built example `name` (next to the test binary's `outbox-relay`). `cargo test` builds
/// examples; a filtered `cargo test --test it` does not, so build it then.
fn example(name: &str) -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay"));
    let path = binary.parent().unwrap().join("examples").join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "cargo build --example {name}");
    }
    path
}

#[tokio::test]
async fn the_custom_handler_example_runs() {
    let db = TestDb::new().await;
    let output = std::process::Command::new(example("custom_handler"))
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .output()
        .expect("run examples/custom_handler (built by cargo test)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        "stream orders.eu: 1 entry\nstream orders.us: 1 entry\n\
         dead letter: by-region: the order has no region\ndone\n"
    );
}
