//! `sbc-media`: run a media node, check a config file, or show a running node's status.

use std::path::PathBuf;
use std::process::ExitCode;

use sbc_shared::config::{Config, Role};

const USAGE: &str = "\
usage:
  sbc-media --config FILE          run the media node
  sbc-media check-config FILE      validate FILE and exit (non-zero on any mistake)
  sbc-media status --config FILE   show the running node's status (connects read-only)
  sbc-media --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version"] | ["-V"] => {
            println!("{}", sbc_shared::software("sbc-media"));
            ExitCode::SUCCESS
        }
        ["check-config", file] => check_config(PathBuf::from(file)),
        ["--config", file] | ["run", "--config", file] => run(PathBuf::from(file)),
        ["status", "--config", file] => status(PathBuf::from(file)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check_config(file: PathBuf) -> ExitCode {
    match Config::load(&file, Role::Media) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &std::path::Path) -> Result<sbc_shared::config::MediaConfig, ExitCode> {
    match Config::load(file, Role::Media) {
        Ok(c) => Ok(c.media.expect("validated for Role::Media")),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("sbc-media: not started: fix the configuration above");
            Err(ExitCode::FAILURE)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sbc-media-rpc")
        .build()
        .expect("a current-thread runtime builds unless the OS is out of resources")
}

fn run(file: PathBuf) -> ExitCode {
    let cfg = match load(&file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    sbc_shared::logging::init(&cfg.log);
    let result = runtime().block_on(sbc_media::driver::run::run(cfg, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("sbc-media failed: {e:#}");
            eprintln!("sbc-media: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn status(file: PathBuf) -> ExitCode {
    let cfg = match load(&file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(unix) = cfg.rpc.unix.as_ref() else {
        eprintln!(
            "sbc-media status: needs media.rpc.unix in {}",
            file.display()
        );
        return ExitCode::FAILURE;
    };
    match runtime().block_on(sbc_media::status::fetch(&unix.path)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sbc-media status: {e:#}");
            ExitCode::FAILURE
        }
    }
}
