//! `sbc-control`: run the control plane, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use sbc_shared::config::{Config, Role};

const USAGE: &str = "\
usage:
  sbc-control --config FILE        run the control plane
  sbc-control check-config FILE    validate FILE and exit (non-zero on any mistake)
  sbc-control --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version"] | ["-V"] => {
            println!("{}", sbc_shared::software("sbc-control"));
            ExitCode::SUCCESS
        }
        ["check-config", file] => {
            let file = PathBuf::from(file);
            match Config::load(&file, Role::Control) {
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
        ["--config", file] | ["run", "--config", file] => run(PathBuf::from(file)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(file: PathBuf) -> ExitCode {
    let cfg = match Config::load(&file, Role::Control) {
        Ok(c) => c.control.expect("validated for Role::Control"),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("sbc-control: not started: fix the configuration above");
            return ExitCode::FAILURE;
        }
    };
    sbc_shared::logging::init(&cfg.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sbc-control")
        .build()
        .expect("the runtime builds unless the OS is out of resources");
    match runtime.block_on(sbc_control::driver::run::run(file, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("sbc-control failed: {e:#}");
            eprintln!("sbc-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
