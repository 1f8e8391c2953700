//! The operator docs match the code: every metric family either process exports is
//! documented in docs/operations.md, and every RPC method and error code in docs/rpc.md.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use sbc_e2e::{Appliance, Settings};
use sbc_shared::rpc::msg::ErrorCode;

fn doc(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
    std::fs::read_to_string(format!("{path}{name}")).expect("docs file exists")
}

#[test]
fn every_exported_metric_is_documented() {
    let app = Appliance::new(&Settings {
        ports: 20,
        ..Settings::default()
    });
    let _media = app.start_media();
    let _control = app.start_control();
    let ops = doc("operations.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    let mut names = Vec::new();
    for page in [app.media_page(), app.control_page()] {
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let name = rest
                .split_whitespace()
                .next()
                .expect("TYPE line names a metric");
            if !name.starts_with("sbc_") {
                continue;
            }
            seen += 1;
            names.push(name.to_owned());
            if !ops.contains(&format!("`{name}")) {
                missing.push(name.to_owned());
            }
        }
    }
    assert!(
        seen >= 26,
        "expected the full metric set, saw {seen}: {names:?}"
    );
    assert!(
        missing.is_empty(),
        "metrics missing from docs/operations.md: {missing:?}"
    );
}

#[test]
fn every_rpc_method_and_error_code_is_documented() {
    let rpc = doc("rpc.md");
    for method in [
        "create_session",
        "update_session",
        "delete_session",
        "get_session",
        "list_sessions",
        "adopt_sessions",
        "stats",
        "ping",
    ] {
        assert!(sbc_shared::rpc::codec::is_known_method(method));
        assert!(
            rpc.contains(&format!("`{method}`")),
            "{method} missing from docs/rpc.md"
        );
    }
    for code in [
        ErrorCode::UnknownSession,
        ErrorCode::NotOwner,
        ErrorCode::PortsExhausted,
        ErrorCode::UnknownInterface,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownMethod,
        ErrorCode::ReadOnly,
        ErrorCode::TooManySessions,
        ErrorCode::Internal,
    ] {
        assert!(
            rpc.contains(&format!("`{}`", code.as_str())),
            "{code} missing from docs/rpc.md"
        );
    }
}
