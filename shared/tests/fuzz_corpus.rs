//! Replays the committed fuzz corpus through the fuzz targets' own code on the stable
//! toolchain, so every `cargo test` proves that no seed (including any crash reproducer
//! added after a fix) panics, even where cargo-fuzz cannot run.
//!
//! The targets' bodies are `sbc_shared::fuzzing::{rpc_frame, config}`; this file adds
//! only the walk over `fuzz/corpus/<target>/` and a check that the named RPC seeds still
//! decode as what their names say (after a wire-format change, regenerate them with
//! `cargo run -p sbc-shared --example gen_rpc_corpus`).

use std::fs;
use std::path::{Path, PathBuf};

use sbc_shared::fuzzing;
use sbc_shared::rpc::codec::{self, ClientInput, DEFAULT_MAX_FRAME_LEN, FrameDecoder};
use sbc_shared::rpc::msg::ServerFrame;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ sits inside the repository")
        .to_path_buf()
}

/// Every regular file under `dir` (recursively), sorted; panics if there is none.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read corpus dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("readable dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus dir {} is empty: the fuzz targets would start from nothing",
        dir.display()
    );
    files
}

/// Run `target` over every file of `fuzz/corpus/<name>`, naming the file on a panic.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let files = corpus(&repo_root().join("fuzz/corpus").join(name));
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(
            outcome.is_ok(),
            "fuzz target `{name}` panicked on {} (reproduce with `cargo fuzz run {name} {}` in fuzz/)",
            file.display(),
            file.display()
        );
    }
    files.len()
}

#[test]
fn rpc_frame_corpus_replays() {
    let n = replay("rpc_frame", fuzzing::rpc_frame);
    println!("replayed {n} rpc_frame seeds");
}

#[test]
fn config_corpus_replays() {
    let n = replay("config", fuzzing::config);
    println!("replayed {n} config seeds");
}

/// The example configs are inputs too: they must never panic the parser either.
#[test]
fn example_configs_replay() {
    let dir = repo_root().join("configs");
    for file in corpus(&dir) {
        if file.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            fuzzing::config(&fs::read(&file).expect("readable example config"));
        }
    }
}

/// All whole frames in `bytes`; panics if the stream is refused or ends mid-frame.
fn whole_frames(file: &Path, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(bytes);
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => panic!("{}: stream refused: {e}", file.display()),
        }
    }
    assert!(
        !decoder.has_partial(),
        "{}: ends inside a frame",
        file.display()
    );
    assert!(!frames.is_empty(), "{}: holds no frame", file.display());
    frames
}

/// `client-*` seeds hold whole client frames, `server-*` seeds whole server frames: if
/// the wire format changed under them they would silently become garbage seeds.
#[test]
fn named_rpc_seeds_still_decode() {
    let mut checked = 0;
    for file in corpus(&repo_root().join("fuzz/corpus/rpc_frame")) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let regenerate = "regenerate with `cargo run -p sbc-shared --example gen_rpc_corpus`";
        if name.starts_with("client-") {
            for frame in whole_frames(&file, &fs::read(&file).expect("readable seed")) {
                match codec::decode_client(&frame) {
                    Ok(ClientInput::Frame(_)) => {}
                    other => panic!(
                        "{}: not a client frame any more ({other:?}); {regenerate}",
                        file.display()
                    ),
                }
            }
            checked += 1;
        } else if name.starts_with("server-") {
            for frame in whole_frames(&file, &fs::read(&file).expect("readable seed")) {
                if let Err(e) = codec::decode::<ServerFrame>(&frame) {
                    panic!(
                        "{}: not a server frame any more ({e}); {regenerate}",
                        file.display()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no client-*/server-* seeds in the rpc_frame corpus"
    );
}
