//! The operator's view of both processes' life: `check-config`, reloads (SIGHUP and
//! `sbcctl reload`, good and bad files), SIGTERM draining the control plane while media
//! sessions live on, `sbcctl` without a control plane, and the metrics listeners.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sbc_e2e::{Appliance, Settings, bin, metric, run, scrape, text, wait_for};
use sbc_shared::rpc::codec::{DEFAULT_MAX_FRAME_LEN, decode};
use sbc_shared::rpc::msg::{
    ClientFrame, HelloAck, PROTOCOL_VERSION, Request, Response, RpcResult, ServerFrame,
};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter};
use tokio::net::UnixListener;

/// `path`'s text with `from` replaced by `to` (which must occur exactly once).
fn edited(path: &Path, from: &str, to: &str) -> String {
    let yaml = std::fs::read_to_string(path).expect("reading the config");
    assert_eq!(yaml.matches(from).count(), 1, "`{from}` once in:\n{yaml}");
    yaml.replace(from, to)
}

/// 1-based line number of the line containing `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
fn check_config_accepts_the_appliance_config_and_points_at_mistakes() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    for binary in ["sbc-control", "sbc-media"] {
        let out = run(
            &bin(binary),
            &["check-config", app.config_str()],
            app.path(),
        );
        assert!(
            out.status.success(),
            "{binary} check-config: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(&format!("{}: ok", app.config_str())),
            "{}",
            text(&out)
        );
    }

    // An unknown key in each process's own section.
    for (binary, after, key) in [
        ("sbc-control", "  node_id: ctl-test\n", "control.bogus_key"),
        ("sbc-media", "  node_name: media-test\n", "media.bogus_key"),
    ] {
        let broken = app.path().join(format!("broken-{binary}.yaml"));
        let yaml = edited(&app.config, after, &format!("{after}  bogus_key: 1\n"));
        std::fs::write(&broken, &yaml).expect("writing the broken config");
        let line = line_of(&yaml, "bogus_key");
        let out = run(
            &bin(binary),
            &["check-config", broken.to_str().expect("utf-8")],
            app.path(),
        );
        assert!(
            !out.status.success(),
            "{binary} accepted an unknown key: {}",
            text(&out)
        );
        let want = format!(
            "{}:{line}:3: {key}: unknown field `bogus_key`",
            broken.display()
        );
        assert!(
            stderr(&out).starts_with(&want),
            "{binary} check-config said:\n{}\nwanted: {want}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{}", text(&out));
    }

    // A bad value: placed at the value, with what was expected and what was found.
    let broken = app.path().join("broken-value.yaml");
    let yaml = edited(&app.config, "drain_timeout: 3s", "drain_timeout: soon");
    std::fs::write(&broken, &yaml).expect("writing the broken config");
    let out = run(
        &bin("sbc-control"),
        &["check-config", broken.to_str().expect("utf-8")],
        app.path(),
    );
    assert!(!out.status.success());
    let want = format!(
        "{}:{}:18: control.drain_timeout: ",
        broken.display(),
        line_of(&yaml, "drain_timeout")
    );
    assert!(
        stderr(&out).starts_with(&want),
        "{}\nwanted: {want}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("`soon`"), "{}", stderr(&out));

    // And a file that is not there.
    let missing = app.path().join("missing.yaml");
    let out = run(
        &bin("sbc-media"),
        &["check-config", missing.to_str().expect("utf-8")],
        app.path(),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with(&format!("{}: .: cannot read the file", missing.display())),
        "{}",
        stderr(&out)
    );
}

fn reloads(app: &Appliance, result: &str) -> f64 {
    metric(
        &app.control_page(),
        &format!("sbc_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn wait_reloads(app: &Appliance, result: &str, count: f64) {
    wait_for(
        Duration::from_secs(10),
        &format!("{count} reloads {result}"),
        || (reloads(app, result) == count).then_some(()),
    );
}

#[test]
fn reload_applies_good_files_and_refuses_bad_ones_without_stopping() {
    let app = Appliance::new(&Settings {
        ports: 100,
        ..Settings::default()
    });
    let mut media = app.start_media();
    let mut control = app.start_control();
    let socket = app.path().join("control.sock");
    let socket = socket.to_str().expect("utf-8");
    let good = std::fs::read_to_string(&app.config).expect("reading the config");

    // SIGHUP with a changed, valid file: applied.
    std::fs::write(
        &app.config,
        edited(&app.config, "drain_timeout: 3s", "drain_timeout: 4s"),
    )
    .expect("write");
    control.signal(libc::SIGHUP);
    wait_reloads(&app, "ok", 1.0);
    assert_eq!(reloads(&app, "failed"), 0.0);
    let log = wait_for(Duration::from_secs(5), "the reload in the log", || {
        let log = control.log_text();
        log.contains("configuration reloaded").then_some(log)
    });
    assert!(log.contains("control.drain_timeout: now 4s"), "{log}");

    // A broken file: `sbcctl reload` fails with exactly what check-config says, and the
    // running configuration stays. (`--socket`: `sbcctl --config` would need the very
    // file that is broken to find the admin socket.)
    std::fs::write(
        &app.config,
        edited(&app.config, "drain_timeout: 4s", "drain_timeout: soon"),
    )
    .expect("write");
    let check = run(
        &bin("sbc-control"),
        &["check-config", app.config_str()],
        app.path(),
    );
    assert!(!check.status.success());
    let problem = stderr(&check);
    assert!(
        problem.starts_with(&format!("{}:", app.config_str())),
        "{problem}"
    );
    assert!(problem.contains(": control.drain_timeout: "), "{problem}");
    let out = app.sbcctl(&["--socket", socket, "reload"]);
    assert!(
        !out.status.success(),
        "a broken config was reloaded: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(&problem),
        "sbcctl reload said:\n{}\ncheck-config said:\n{problem}",
        text(&out)
    );
    wait_reloads(&app, "failed", 1.0);
    assert_eq!(reloads(&app, "ok"), 1.0);
    assert!(
        control.is_running(),
        "a failed reload stopped sbc-control; log:\n{}",
        control.log_text()
    );
    let status = app.sbcctl(&["--socket", socket, "status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("reloads:        1 ok, 1 failed"),
        "{}",
        text(&status)
    );
    assert!(text(&status).contains("connected"), "{}", text(&status));
    assert!(
        control.log_text().contains(&problem),
        "the control log shows the problem:\n{}",
        control.log_text()
    );

    // Plain `sbcctl reload` (finding the socket through the broken file) also fails
    // loudly with the same text, and says how to get past it.
    let out = app.sbcctl(&["reload"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains(&problem), "{}", text(&out));

    // SIGHUP with the broken file: refused the same way, still running.
    let failed = reloads(&app, "failed");
    control.signal(libc::SIGHUP);
    wait_reloads(&app, "failed", failed + 1.0);
    assert!(control.is_running());

    // Changing node_id needs a restart: refused, naming the key.
    std::fs::write(
        &app.config,
        good.replace("node_id: ctl-test", "node_id: ctl-renamed"),
    )
    .expect("write");
    let failed = reloads(&app, "failed");
    let out = app.sbcctl(&["reload"]);
    assert!(
        !out.status.success(),
        "node_id changed while running: {}",
        text(&out)
    );
    assert!(stderr(&out).contains("control.node_id"), "{}", text(&out));
    assert!(stderr(&out).contains("ctl-renamed"), "{}", text(&out));
    wait_reloads(&app, "failed", failed + 1.0);
    assert_eq!(reloads(&app, "ok"), 1.0);
    let status = app.sbcctl(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("control plane:  ctl-test "),
        "{}",
        text(&status)
    );

    // Back to the original file: accepted, and the media link was never disturbed.
    std::fs::write(&app.config, &good).expect("write");
    let out = app.sbcctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("configuration reloaded"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("control.drain_timeout: now 3s"),
        "{}",
        text(&out)
    );
    wait_reloads(&app, "ok", 2.0);
    let page = app.control_page();
    assert_eq!(
        metric(&page, "sbc_media_node_up{node=\"local\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "sbc_media_node_connects_total{node=\"local\",result=\"ok\"}"
        ),
        Some(1.0)
    );
    assert!(media.is_running() && control.is_running());
}

#[test]
fn sigterm_drains_the_control_plane_and_media_sessions_live_on() {
    let app = Appliance::new(&Settings {
        ports: 100,
        ..Settings::default()
    });
    let mut media = app.start_media();
    let mut control = app.start_control();
    let out = app.sbcctl(&["sessions", "create", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("created 10 sessions"), "{}", text(&out));
    assert_eq!(
        metric(&app.media_page(), "sbc_media_sessions{state=\"owned\"}"),
        Some(10.0)
    );

    control.signal(libc::SIGTERM);
    // drain_timeout is 3s in the test config.
    let status = control.wait_exit(Duration::from_secs(3 + 2));
    assert!(
        status.success(),
        "sbc-control exited with {status:?}; log:\n{}",
        control.log_text()
    );
    let log = control.log_text();
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("control plane stopped"), "{log}");
    assert!(
        !app.path().join("control.sock").exists(),
        "the admin socket is removed on exit"
    );
    assert!(
        scrape(app.control_metrics).is_none(),
        "the metrics listener is gone"
    );

    // Media carries on: the sessions are orphaned, not ended.
    let page = wait_for(Duration::from_secs(5), "10 sessions orphaned", || {
        let page = scrape(app.media_metrics)?;
        (metric(&page, "sbc_media_sessions{state=\"orphaned\"}")? == 10.0).then_some(page)
    });
    assert!(
        media.is_running(),
        "sbc-media stopped with the control plane; log:\n{}",
        media.log_text()
    );
    assert_eq!(
        metric(&page, "sbc_media_sessions{state=\"owned\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&page, "sbc_media_control_connections"), Some(0.0));
    assert_eq!(
        metric(
            &page,
            "sbc_media_sessions_reaped_total{reason=\"unclaimed\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&page, "sbc_media_ports_in_use{interface=\"lo\"}"),
        Some(40.0),
        "2 legs × RTP+RTCP × 10"
    );
}

/// A media node (fake, protocol version 1) that accepts the hello, answers `list_sessions`
/// with nothing, and never answers anything else: every other call hangs.
fn black_hole_media_node(listener: UnixListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, w) = stream.into_split();
                let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN, Duration::from_secs(5));
                let mut writer = FrameWriter::new(w);
                while let Ok(Some(frame)) = reader.read_frame().await {
                    let answer = match decode::<ClientFrame>(&frame) {
                        Ok(ClientFrame::Hello(_)) => ServerFrame::HelloAck(HelloAck {
                            protocol_version: PROTOCOL_VERSION,
                            software: "black-hole".into(),
                            node_name: "black-hole".into(),
                            orphan_grace_ms: 30_000,
                            interfaces: vec!["lo".into()],
                        }),
                        Ok(ClientFrame::Request {
                            id,
                            request: Request::ListSessions { .. },
                        }) => ServerFrame::Response {
                            id,
                            result: RpcResult::Ok(Response::Sessions {
                                sessions: Vec::new(),
                                next: None,
                            }),
                        },
                        _ => continue,
                    };
                    if writer.write_msg(&answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_running_work_at_most_drain_timeout() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    black_hole_media_node(
        UnixListener::bind(&app.media_socket).expect("bind the fake media socket"),
    );
    let mut control = app.start_control();

    // An operator's request that will hang on the media node (request_timeout 5s > drain 3s).
    let mut stuck = Command::new(bin("sbcctl"))
        .args(["--config", app.config_str(), "sessions", "create", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sbcctl");
    wait_for(
        Duration::from_secs(10),
        "the stuck request in progress",
        || {
            (metric(
                &scrape(app.control_metrics)?,
                "sbc_control_work_in_progress",
            )? == 1.0)
                .then_some(())
        },
    );

    let sent = Instant::now();
    control.signal(libc::SIGTERM);
    wait_for(Duration::from_secs(2), "draining", || {
        (metric(&scrape(app.control_metrics)?, "sbc_control_draining")? == 1.0).then_some(())
    });
    // While draining: status answers and says so; new work is refused.
    let status = app.sbcctl(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("(draining)"), "{}", text(&status));
    let refused = app.sbcctl(&["sessions", "create", "1"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("draining"), "{}", text(&refused));
    assert!(
        control.is_running(),
        "sbc-control must wait for the running request"
    );

    let exit = control.wait_exit(Duration::from_secs(3 + 2));
    let took = sent.elapsed();
    assert!(exit.success(), "{exit:?}; log:\n{}", control.log_text());
    assert!(
        took >= Duration::from_millis(2900),
        "exited after {took:?}, before drain_timeout (3s)"
    );
    let log = control.log_text();
    assert!(log.contains("waiting for running work to finish"), "{log}");
    assert!(log.contains("drain time over; exiting anyway"), "{log}");
    assert!(log.contains("control plane stopped"), "{log}");

    // The stuck sbcctl learns that sbc-control went away instead of hanging.
    wait_for(
        Duration::from_secs(10),
        "the stuck sbcctl to finish",
        || stuck.try_wait().expect("waitpid").map(|_| ()),
    );
    let out = stuck.wait_with_output().expect("collecting sbcctl output");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("closed the connection without answering"),
        "{}",
        text(&out)
    );
}

#[test]
fn sbcctl_without_a_control_plane_says_so() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    // Nothing at the configured admin socket.
    let out = app.sbcctl(&["status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("is sbc-control running?"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("control.sock"),
        "names the socket: {}",
        text(&out)
    );

    // A stale socket file nobody listens on.
    let stale = app.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let out = run(
        &bin("sbcctl"),
        &["--socket", stale.to_str().expect("utf-8"), "status"],
        app.path(),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("is sbc-control running?"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("stale.sock"), "{}", text(&out));
}

/// GET `path`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn both_metrics_listeners_serve_build_info_and_uptime() {
    let app = Appliance::new(&Settings {
        ports: 10,
        ..Settings::default()
    });
    let _media = app.start_media();
    let _control = app.start_control();
    for (process, addr) in [
        ("sbc-control", app.control_metrics),
        ("sbc-media", app.media_metrics),
    ] {
        let (status, page) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{process} /metrics");
        let build = page
            .lines()
            .find(|l| l.starts_with("sbc_build_info{"))
            .unwrap_or_else(|| panic!("{process}: no sbc_build_info in\n{page}"));
        assert!(build.contains(&format!("process=\"{process}\"")), "{build}");
        assert!(build.contains("rpc_protocol=\"1\""), "{build}");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{build}"
        );
        assert!(build.ends_with("} 1"), "{build}");
        assert!(
            page.contains("# TYPE sbc_uptime_seconds gauge"),
            "{process}: {page}"
        );
        assert!(
            metric(&page, "sbc_uptime_seconds").is_some(),
            "{process}: {page}"
        );

        let (status, body) = get(addr, "/nope");
        assert!(
            status.starts_with("HTTP/1.1 404"),
            "{process} /nope: {status}"
        );
        assert!(
            body.contains("/metrics"),
            "the 404 points at /metrics: {body}"
        );
        let (status, body) = get(addr, "/healthz");
        assert_eq!(status, "HTTP/1.1 200 OK", "{process} /healthz");
        assert_eq!(body, "ok\n");
    }
    // Uptime counts.
    for (process, addr) in [
        ("sbc-control", app.control_metrics),
        ("sbc-media", app.media_metrics),
    ] {
        wait_for(
            Duration::from_secs(5),
            &format!("{process} uptime of 1s"),
            || (metric(&scrape(addr)?, "sbc_uptime_seconds")? >= 1.0).then_some(()),
        );
    }
}
