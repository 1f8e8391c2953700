//! Replays the committed corpora of the data plane's fuzz targets on stable Rust.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        f(&std::fs::read(&path).expect("readable seed"));
        n += 1;
    }
    assert!(n > 0, "{} has no seeds", dir.display());
}

#[test]
fn rtp_header_corpus() {
    replay("rtp_header", sbc_media::fuzzing::rtp_header);
}

#[test]
fn rtcp_corpus() {
    replay("rtcp", sbc_media::fuzzing::rtcp);
}
