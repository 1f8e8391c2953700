//! `sbcctl`: the operator's command line for a running `sbc-control`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sbc_control::admin::{AdminRequest, AdminResponse};
use sbc_shared::config::{Config, Role};
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter};

const USAGE: &str = "\
usage: sbcctl [--config FILE | --socket PATH] COMMAND
commands:
  status                          versions, uptime, media nodes, session counts
  reload                          re-read the config file (same as SIGHUP)
  sessions create N [--node NAME] [--interface NAME]
                                  diagnostic: allocate N idle media sessions
  sessions delete [--node NAME]   diagnostic: delete them again
  --json                          (before COMMAND) print the raw JSON answer
The admin socket comes from --socket, or from control.admin_socket in --config
(default /etc/sbc/sbc.yaml).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = PathBuf::from("/etc/sbc/sbc.yaml");
    let mut socket: Option<PathBuf> = None;
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().map(PathBuf::from).unwrap_or_default(),
            "--socket" => socket = it.next().map(PathBuf::from),
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => rest.push(a),
        }
    }
    let request = match parse_command(&rest) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sbcctl: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let socket = match socket {
        Some(s) => s,
        None => match Config::load(&config, Role::Control) {
            Ok(c) => c.control.expect("validated for Role::Control").admin_socket,
            // A broken file may still name the socket; `reload` must reach the running
            // control plane so that it refuses (and counts) the bad file itself.
            Err(e) => match admin_socket_leniently(&config) {
                Some(s) => {
                    if !matches!(request, AdminRequest::Reload) {
                        eprintln!("sbcctl: warning: the config file has mistakes:\n{e}");
                    }
                    s
                }
                None => {
                    eprintln!(
                        "{e}\nsbcctl: cannot find the admin socket; fix the config or pass --socket"
                    );
                    return ExitCode::FAILURE;
                }
            },
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let answer = runtime.block_on(ask(&socket, &request));
    match answer {
        Err(e) => {
            eprintln!("sbcctl: {e}");
            ExitCode::FAILURE
        }
        Ok(resp) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&resp).expect("responses serialise")
                );
            }
            match resp {
                AdminResponse::Error { message } => {
                    eprintln!("sbcctl: refused: {message}");
                    ExitCode::FAILURE
                }
                _ if json => ExitCode::SUCCESS,
                AdminResponse::Status(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                AdminResponse::Reloaded { changes } => {
                    println!("configuration reloaded");
                    for c in changes {
                        println!("  {c}");
                    }
                    ExitCode::SUCCESS
                }
                AdminResponse::Created {
                    created,
                    first_error,
                } => {
                    println!("created {created} sessions");
                    report(first_error)
                }
                AdminResponse::Deleted {
                    deleted,
                    first_error,
                } => {
                    println!("deleted {deleted} sessions");
                    report(first_error)
                }
            }
        }
    }
}

/// `control.admin_socket` from a file that may not validate (default if absent).
fn admin_socket_leniently(config: &std::path::Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let control = doc.get("control")?;
    Some(match control.get("admin_socket").and_then(|v| v.as_str()) {
        Some(s) => PathBuf::from(s),
        None => PathBuf::from("/run/sbc/control.sock"),
    })
}

fn report(first_error: Option<String>) -> ExitCode {
    match first_error {
        Some(e) => {
            eprintln!("sbcctl: stopped at an error: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn parse_command(args: &[String]) -> Result<AdminRequest, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1))
            .map(|s| (*s).to_owned())
    };
    match args.as_slice() {
        ["status"] => Ok(AdminRequest::Status),
        ["reload"] => Ok(AdminRequest::Reload),
        ["sessions", "create", n, ..] => Ok(AdminRequest::CreateSessions {
            count: n
                .parse()
                .map_err(|_| format!("`{n}` is not a number of sessions"))?,
            node: flag("--node"),
            interface: flag("--interface"),
        }),
        ["sessions", "delete", ..] => Ok(AdminRequest::DeleteSessions {
            node: flag("--node"),
        }),
        [] => Err("no command given".into()),
        other => Err(format!("unknown command `{}`", other.join(" "))),
    }
}

async fn ask(socket: &PathBuf, request: &AdminRequest) -> Result<AdminResponse, String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is sbc-control running?)",
            socket.display()
        )
    })?;
    let (r, w) = stream.into_split();
    let mut writer = FrameWriter::new(w);
    let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN, Duration::from_secs(30));
    writer.write_msg(request).await.map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(Duration::from_secs(600), reader.read_frame())
        .await
        .map_err(|_| "no answer within 600s".to_owned())?
        .map_err(|e| e.to_string())?
        .ok_or("sbc-control closed the connection without answering")?;
    decode::<AdminResponse>(&frame).map_err(|e| e.to_string())
}
