//! Every kind of mistake `check-config` reports, with the exact place, key path and
//! expectation; the example files; and the documentation checked against the types.

use std::collections::BTreeSet;

use super::*;

const CONTROL_OK: &str = r#"control:
  node_id: ctl-1
  media_nodes:
    - name: local
      unix: /run/sbc/media.sock
"#;

const MEDIA_OK: &str = r#"media:
  node_name: media-1
  rpc:
    unix:
      path: /run/sbc/media.sock
  interfaces:
    - name: public
      address: 192.0.2.10
      ports: 30000-39999
"#;

fn parse(text: &str, role: Role) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("x.yaml"), role)
}

fn errors(text: &str, role: Role) -> Vec<ConfigError> {
    match parse(text, role) {
        Ok(c) => panic!("expected a mistake in\n{text}\nbut it parsed: {c:?}"),
        Err(e) => e.0,
    }
}

/// The one mistake in `text` (for `Role::Any`).
fn the_error(text: &str) -> ConfigError {
    let mut all = errors(text, Role::Any);
    assert_eq!(all.len(), 1, "expected one mistake, got {all:#?}");
    all.remove(0)
}

#[track_caller]
fn assert_error(e: &ConfigError, line: usize, column: usize, key: &str, fragment: &str) {
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (Some(line), Some(column), key),
        "place and key of {e}"
    );
    assert!(
        e.problem.contains(fragment),
        "problem of {e}\nshould contain: {fragment}"
    );
    assert_eq!(e.file, Path::new("x.yaml"));
}

// ---------------------------------------------------------------------------------------
// Deserialisation mistakes (serde): place from serde_yaml or from the path index.

#[test]
fn yaml_syntax_error_points_where_the_parser_stopped() {
    let text = "control:\n  node_id: a\n   media_nodes: []\n";
    let e = the_error(text);
    assert_error(&e, 3, 15, "control", "mapping values are not allowed");
    assert!(
        !e.problem.contains("line 3"),
        "the place is not repeated: {e}"
    );

    // An unclosed quote: the end of the file, and where the quote opened.
    let e = the_error("control:\n  node_id: \"ctl-1\n");
    assert_error(
        &e,
        3,
        1,
        "control.node_id",
        "unexpected end of stream, while scanning a quoted scalar at line 2 column 12",
    );

    // A tab for indentation.
    let e = the_error("media:\n\tnode_name: m\n");
    assert_error(&e, 2, 1, "media", "cannot start any token");
}

#[test]
fn unknown_key_at_depth_is_placed_at_the_key() {
    let text = CONTROL_OK.replace("unix:", "unixx:");
    let e = the_error(&text);
    assert_error(
        &e,
        5,
        7,
        "control.media_nodes[0].unixx",
        "unknown field `unixx`, expected one of `name`, `unix`, `quic`",
    );

    let e = the_error("# comment\ncontroll:\n  node_id: c\n");
    assert_error(
        &e,
        2,
        1,
        "controll",
        "unknown field `controll`, expected `control` or `media`",
    );

    let text = format!("{MEDIA_OK}  rpc_typo: 1\n");
    let e = the_error(&text);
    assert_error(&e, 10, 3, "media.rpc_typo", "unknown field `rpc_typo`");
}

#[test]
fn wrong_type_is_placed_at_the_value() {
    let text = MEDIA_OK.replace("  rpc:", "  max_sessions: lots\n  rpc:");
    let e = the_error(&text);
    assert_error(
        &e,
        3,
        17,
        "media.max_sessions",
        "invalid type: string \"lots\", expected a whole number from 0 to 4294967295",
    );

    // Text that looks like serde's own decorations is left alone.
    let text = MEDIA_OK.replace(
        "  rpc:",
        "  max_sessions: \"expected struct X at line 3 column 17\"\n  rpc:",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        3,
        17,
        "media.max_sessions",
        "invalid type: string \"expected struct X at line 3 column 17\", expected a whole number",
    );

    // A list where a mapping belongs.
    let e = the_error("media:\n  node_name: m\n  rpc:\n    - unix\n");
    assert_error(
        &e,
        4,
        5,
        "media.rpc",
        "invalid type: sequence, expected a mapping of keys",
    );

    // A mapping where a list belongs.
    let text = MEDIA_OK.replace("    - name: public", "    name: public");
    let e = the_error(&text);
    assert_error(
        &e,
        7,
        5,
        "media.interfaces",
        "invalid type: map, expected a sequence",
    );

    // The whole file is a list.
    let e = the_error("- control\n");
    assert_error(
        &e,
        1,
        1,
        ".",
        "invalid type: sequence, expected a mapping of keys",
    );
}

#[test]
fn missing_required_key_names_the_key_and_points_at_its_mapping() {
    // serde_yaml would place this at the mapping's first key (`node_name`), under the
    // path `media`; we name the missing key and point at `media:`.
    let text = "# media only\nmedia:\n  node_name: media-1\n  rpc:\n    unix: {path: /x}\n";
    let e = the_error(text);
    assert_error(
        &e,
        2,
        1,
        "media.interfaces",
        "expected the key `interfaces`, which is required, but it is missing",
    );

    // In a list item: the item's first key.
    let text = format!("{CONTROL_OK}    - unix: /run/sbc/other.sock\n");
    let e = the_error(&text);
    assert_error(
        &e,
        6,
        7,
        "control.media_nodes[1].name",
        "`name`, which is required",
    );

    // In a flow mapping: its `{`.
    let e = the_error("control: {node_id: a, media_nodes: [{name: x, unix: /x}, {unix: /y}]}\n");
    assert_error(
        &e,
        1,
        58,
        "control.media_nodes[1].name",
        "`name`, which is required",
    );

    // A nested mapping: `quic` without `ca`.
    let text = CONTROL_OK.replace(
        "      unix: /run/sbc/media.sock\n",
        "      quic:\n        address: 192.0.2.20:7400\n        server_name: m\n        cert: /c\n        key: /k\n",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        5,
        7,
        "control.media_nodes[0].quic.ca",
        "`ca`, which is required",
    );
}

#[test]
fn duplicate_key_points_at_the_second_occurrence() {
    let text = CONTROL_OK.replace("  media_nodes:", "  node_id: ctl-2\n  media_nodes:");
    let e = the_error(&text);
    assert_error(&e, 3, 3, "control.node_id", "`node_id` appears again");
}

#[test]
fn bad_enum_variant_lists_the_choices() {
    let text = CONTROL_OK.replace("  media_nodes:", "  log:\n    format: xml\n  media_nodes:");
    let e = the_error(&text);
    assert_error(
        &e,
        4,
        13,
        "control.log.format",
        "unknown variant `xml`, expected one of `auto`, `human`, `json`",
    );
}

#[test]
fn invalid_socket_address() {
    let text = CONTROL_OK.replace(
        "  media_nodes:",
        "  metrics:\n    listen: \"localhost:99999\"\n  media_nodes:",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        4,
        13,
        "control.metrics.listen",
        "expected an IP address and port such as `192.0.2.10:7400`",
    );
    assert!(e.problem.ends_with("got `localhost:99999`"), "{e}");

    // Port out of range, in a QUIC media node.
    let text = CONTROL_OK.replace(
        "      unix: /run/sbc/media.sock\n",
        "      quic: {address: 192.0.2.20:70000, server_name: m, ca: /a, cert: /c, key: /k}\n",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        5,
        23,
        "control.media_nodes[0].quic.address",
        "got `192.0.2.20:70000`",
    );
}

#[test]
fn invalid_ip_address() {
    let text = MEDIA_OK.replace("192.0.2.10", "media.example.net");
    let e = the_error(&text);
    assert_error(
        &e,
        8,
        16,
        "media.interfaces[0].address",
        "expected an IPv4 or IPv6 address such as `192.0.2.10`",
    );

    let text = MEDIA_OK.replace(
        "      ports:",
        "      advertise: 203.0.113.300\n      ports:",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        9,
        18,
        "media.interfaces[0].advertise",
        "got `203.0.113.300`",
    );
}

#[test]
fn invalid_duration() {
    let text = CONTROL_OK.replace(
        "  media_nodes:",
        "  drain_timeout: 30 seconds\n  media_nodes:",
    );
    let e = the_error(&text);
    assert_error(
        &e,
        3,
        18,
        "control.drain_timeout",
        "expected a duration unit of `ms`, `s`, `m` or `h`, got `seconds` in `30 seconds`",
    );

    let text = MEDIA_OK.replace("  rpc:", "  orphan_grace: 30\n  rpc:");
    let e = the_error(&text);
    assert_error(&e, 3, 17, "media.orphan_grace", "a duration with a unit");
}

#[test]
fn invalid_port_ranges_say_which_rule_they_break() {
    for (ports, why) in [
        ("39999-30000", "got `39999-30000`: LOW is not below HIGH"),
        ("30001-39999", "got `30001-39999`: LOW is odd"),
        ("1000-2000", "got `1000-2000`: LOW is below 1024"),
        ("30000", "got `30000`"),
        ("30000-70000", "got `30000-70000`"),
    ] {
        let text = MEDIA_OK.replace("30000-39999", ports);
        let e = the_error(&text);
        assert_error(&e, 9, 14, "media.interfaces[0].ports", why);
        assert!(
            e.problem.starts_with("expected a port range `LOW-HIGH`"),
            "{e}"
        );
    }
}

#[test]
fn invalid_file_mode() {
    for mode in ["\"0999\"", "rw-rw----", "\"01777\""] {
        let text = CONTROL_OK.replace(
            "  media_nodes:",
            &format!("  admin_socket_mode: {mode}\n  media_nodes:"),
        );
        let e = the_error(&text);
        assert_error(
            &e,
            3,
            22,
            "control.admin_socket_mode",
            "expected permission bits as an octal string such as \"0660\"",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Validation mistakes (rules across keys): place from the path index.

#[test]
fn duplicate_media_node_names() {
    let text = format!("{CONTROL_OK}    - name: local\n      unix: /run/sbc/other.sock\n");
    let e = the_error(&text);
    assert_error(
        &e,
        6,
        7,
        "control.media_nodes[1].name",
        "expected a unique name, but `local` is used twice",
    );
}

#[test]
fn duplicate_interface_names() {
    let text = format!(
        "{MEDIA_OK}    - name: public\n      address: \"2001:db8::10\"\n      ports: 30000-39999\n"
    );
    let e = the_error(&text);
    assert_error(
        &e,
        10,
        7,
        "media.interfaces[1].name",
        "expected a unique name, but `public` is used twice",
    );
}

#[test]
fn media_node_needs_exactly_one_transport() {
    let both = CONTROL_OK.replace(
        "      unix: /run/sbc/media.sock\n",
        "      unix: /run/sbc/media.sock\n      quic: {address: 192.0.2.20:7400, server_name: m, ca: /a, cert: /c, key: /k}\n",
    );
    let e = the_error(&both);
    assert_error(
        &e,
        4,
        7,
        "control.media_nodes[0]",
        "exactly one of `unix` or `quic`, got both",
    );

    let neither = CONTROL_OK.replace("      unix: /run/sbc/media.sock\n", "");
    let e = the_error(&neither);
    assert_error(&e, 4, 7, "control.media_nodes[0]", "got neither");
}

#[test]
fn overlapping_port_ranges_on_one_address() {
    let text = format!(
        "{MEDIA_OK}    - name: second\n      address: 192.0.2.10\n      ports: 39000-40999\n"
    );
    let e = the_error(&text);
    assert_error(
        &e,
        12,
        7,
        "media.interfaces[1].ports",
        "does not overlap interfaces[0] (30000-39999) on the same address, got 39000-40999",
    );

    // The same range on another address is fine.
    let text = format!(
        "{MEDIA_OK}    - name: second\n      address: 192.0.2.11\n      ports: 30000-39999\n"
    );
    parse(&text, Role::Any).unwrap();
}

#[test]
fn missing_section_for_the_role() {
    let e = errors(&format!("# media host\n\n{MEDIA_OK}"), Role::Control);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_error(
        &e[0],
        3,
        1,
        ".",
        "expected a `control` section: sbc-control needs it",
    );

    let e = errors(CONTROL_OK, Role::Media);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_error(
        &e[0],
        1,
        1,
        ".",
        "expected a `media` section: sbc-media needs it",
    );

    // An empty file has no place to point at but its start.
    let e = errors("# nothing yet\n", Role::Any);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_error(
        &e[0],
        1,
        1,
        ".",
        "expected a `control` section, a `media` section, or both",
    );

    // Each role accepts a file with only its own section.
    parse(CONTROL_OK, Role::Control).unwrap();
    parse(MEDIA_OK, Role::Media).unwrap();
}

#[test]
fn bad_log_level() {
    let text = MEDIA_OK.replace("  rpc:", "  log:\n    level: verbose\n  rpc:");
    let e = the_error(&text);
    assert_error(
        &e,
        4,
        5,
        "media.log.level",
        "expected a level (error, warn, info, debug, trace) or `module=level` directives, got `verbose`",
    );

    let text = MEDIA_OK.replace("  rpc:", "  log:\n    level: info,sbc_media=loud\n  rpc:");
    let e = the_error(&text);
    assert_error(&e, 4, 5, "media.log.level", "got `info,sbc_media=loud`");

    let text = MEDIA_OK.replace("  rpc:", "  log:\n    level: warn,sbc_media=DEBUG\n  rpc:");
    parse(&text, Role::Any).unwrap();
}

#[test]
fn bad_node_id_characters() {
    let text = CONTROL_OK.replace("ctl-1", "\"ctl 1/a\"");
    let e = the_error(&text);
    assert_error(
        &e,
        2,
        3,
        "control.node_id",
        "expected 1 to 64 letters, digits, `.`, `_` or `-`, got `ctl 1/a`",
    );

    let text = CONTROL_OK.replace("ctl-1", &"n".repeat(65));
    let e = the_error(&text);
    assert_error(&e, 2, 3, "control.node_id", "expected 1 to 64 letters");

    let text = MEDIA_OK.replace("media-1", "\"\"");
    let e = the_error(&text);
    assert_error(&e, 2, 3, "media.node_name", "got ``");
}

#[test]
fn other_validation_rules() {
    let text = CONTROL_OK.replace(
        "  media_nodes:\n    - name: local\n      unix: /run/sbc/media.sock\n",
        "  media_nodes: []\n",
    );
    assert_error(
        &the_error(&text),
        3,
        3,
        "control.media_nodes",
        "at least one media node",
    );

    let text = MEDIA_OK.replace(
        "    unix:\n      path: /run/sbc/media.sock\n",
        "    max_connections: 8\n",
    );
    assert_error(
        &the_error(&text),
        3,
        3,
        "media.rpc",
        "expected `unix`, `quic` or both",
    );

    let text = MEDIA_OK.replace("  rpc:", "  inactivity_timeout: 500ms\n  rpc:");
    assert_error(
        &the_error(&text),
        3,
        3,
        "media.inactivity_timeout",
        "at least 1s",
    );

    let text = MEDIA_OK.replace("  rpc:", "  orphan_grace: 0s\n  rpc:");
    assert_error(&the_error(&text), 3, 3, "media.orphan_grace", "above zero");

    let text = MEDIA_OK.replace("  rpc:\n", "  rpc:\n    max_frame_len: 1000\n");
    assert_error(
        &the_error(&text),
        4,
        5,
        "media.rpc.max_frame_len",
        "at least 65536 bytes, got 1000",
    );

    let text = format!("{CONTROL_OK}  rpc: {{request_timeout: 0ms}}\n");
    assert_error(
        &the_error(&text),
        6,
        9,
        "control.rpc.request_timeout",
        "above zero",
    );
}

#[test]
fn several_mistakes_are_reported_in_file_order() {
    let text = format!(
        "{}{}",
        CONTROL_OK.replace("ctl-1", "bad/id"),
        MEDIA_OK
            .replace("media-1", "bad name")
            .replace("  rpc:", "  log: {level: chatty}\n  rpc:")
    );
    let e = errors(&text, Role::Any);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(2), "control.node_id"),
            (Some(7), "media.node_name"),
            (Some(8), "media.log.level"),
        ]
    );
}

#[test]
fn display_is_file_line_column_key_problem() {
    let text = MEDIA_OK.replace("  rpc:", "  max_sessions: lots\n  rpc:");
    let errors = parse(&text, Role::Any).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "x.yaml:3:17: media.max_sessions: invalid type: string \"lots\", expected a whole number from 0 to 4294967295"
    );

    // Several mistakes: one a line.
    let text = format!("{CONTROL_OK}    - name: local\n{MEDIA_OK}").replace("media-1", "a b");
    let errors = parse(&text, Role::Any).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "x.yaml:6:7: control.media_nodes[1].name: expected a unique name, but `local` is used twice\n\
         x.yaml:6:7: control.media_nodes[1]: expected exactly one of `unix` (socket path) or `quic` (remote node), got neither\n\
         x.yaml:8:3: media.node_name: expected 1 to 64 letters, digits, `.`, `_` or `-`, got `a b`"
    );

    // No place: an unreadable file.
    let missing = Path::new("/nonexistent/sbc.yaml");
    let errors = Config::load(missing, Role::Any).unwrap_err();
    assert_eq!(errors.0[0].line, None);
    assert!(
        errors
            .to_string()
            .starts_with("/nonexistent/sbc.yaml: .: cannot read the file: "),
        "{errors}"
    );
}

// ---------------------------------------------------------------------------------------
// The example files.

const DEMO: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.yaml"));
const CARRIER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../configs/carrier.yaml"
));
const DOCS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn demo_config_is_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.yaml"));
    let c = Config::load(path, Role::Any).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.control.is_some() && c.media.is_some());
    Config::parse(DEMO, path, Role::Control).unwrap();
    Config::parse(DEMO, path, Role::Media).unwrap();
}

#[test]
fn carrier_config_is_valid() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/carrier.yaml"
    ));
    let c = Config::load(path, Role::Any).unwrap_or_else(|e| panic!("{e}"));
    let control = c.control.unwrap();
    let media = c.media.unwrap();
    // What the file promises in its header.
    assert_eq!(control.log.format, LogFormat::Json);
    assert_eq!(media.log.format, LogFormat::Json);
    assert!(control.media_nodes.iter().any(|n| n.unix.is_some()));
    assert!(control.media_nodes.iter().any(|n| n.quic.is_some()));
    assert!(media.interfaces.iter().any(|i| i.address.is_ipv4()));
    assert!(media.interfaces.iter().any(|i| i.address.is_ipv6()));
    assert!(control.admin_socket.starts_with("/run/sbc"));
    let quic = media.rpc.quic.unwrap();
    assert!(quic.ca.starts_with("/etc/sbc"));
}

/// A config with every `Option` set and one item in every list: serialised, it shows
/// every key the file format has.
fn every_key() -> Config {
    let quic_client = QuicClientConfig {
        address: "192.0.2.20:7400".parse().unwrap(),
        server_name: "media-2.sbc.example".into(),
        ca: "/etc/sbc/tls/ca.pem".into(),
        cert: "/etc/sbc/tls/control.pem".into(),
        key: "/etc/sbc/tls/control.key".into(),
    };
    Config {
        control: Some(ControlConfig {
            node_id: "ctl-1".into(),
            log: LogConfig::default(),
            metrics: default_control_metrics(),
            admin_socket: default_admin_socket(),
            admin_socket_mode: default_socket_mode(),
            drain_timeout: default_drain(),
            media_nodes: vec![MediaNodeConfig {
                name: "both".into(),
                unix: Some("/run/sbc/media.sock".into()),
                quic: Some(quic_client),
            }],
            rpc: RpcClientConfig::default(),
        }),
        media: Some(MediaConfig {
            node_name: "media-1".into(),
            log: LogConfig::default(),
            metrics: default_media_metrics(),
            rpc: MediaRpcConfig {
                unix: Some(UnixListenConfig {
                    path: "/run/sbc/media.sock".into(),
                    mode: default_socket_mode(),
                }),
                quic: Some(QuicServerConfig {
                    listen: "[::]:7400".parse().unwrap(),
                    ca: "/etc/sbc/tls/ca.pem".into(),
                    cert: "/etc/sbc/tls/media.pem".into(),
                    key: "/etc/sbc/tls/media.key".into(),
                }),
                max_frame_len: default_max_frame(),
                stall_timeout: default_stall(),
                max_connections: default_max_connections(),
            },
            orphan_grace: default_orphan_grace(),
            inactivity_timeout: default_inactivity(),
            max_sessions: default_max_sessions(),
            interfaces: vec![MediaInterfaceConfig {
                name: "public".into(),
                address: "10.0.0.10".parse().unwrap(),
                advertise: Some("203.0.113.10".parse().unwrap()),
                ports: PortRange::parse("30000-39999").unwrap(),
                dscp: Some(46),
            }],
            engine: EngineKind::IoUring,
            cores: vec![1],
            allow_latch_any_ip: false,
        }),
    }
}

/// Every key path in a YAML value, lists written `[]`: `control.media_nodes[].quic.ca`.
fn key_paths(value: &serde_yaml::Value) -> BTreeSet<String> {
    fn walk(v: &serde_yaml::Value, path: &str, out: &mut BTreeSet<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().expect("keys are strings");
                    let p = if path.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.insert(p.clone());
                    walk(v, &p, out);
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(value, "", &mut out);
    out
}

fn every_key_path() -> BTreeSet<String> {
    let value = serde_yaml::to_value(every_key()).unwrap();
    let paths = key_paths(&value);
    assert!(paths.contains("control.media_nodes[].quic.ca"), "{paths:?}");
    assert!(paths.contains("media.interfaces[].advertise"), "{paths:?}");
    paths
}

#[test]
fn a_fully_populated_config_round_trips() {
    let text = serde_yaml::to_string(&every_key()).unwrap();
    let back: Config = serde_yaml::from_str(&text).unwrap();
    assert_eq!(back, every_key());
}

#[test]
fn carrier_yaml_shows_every_key() {
    let value: serde_yaml::Value = serde_yaml::from_str(CARRIER).unwrap();
    let shown = key_paths(&value);
    let missing: Vec<_> = every_key_path().difference(&shown).cloned().collect();
    assert!(
        missing.is_empty(),
        "configs/carrier.yaml lacks: {missing:?}"
    );
}

#[test]
fn carrier_yaml_explains_every_key() {
    let mut previous = "";
    for (n, line) in CARRIER.lines().enumerate() {
        let body = line.trim_start().trim_start_matches("- ");
        let is_key = !body.starts_with('#')
            && body.split_once(':').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if is_key {
            assert!(
                line.contains(" # ") || previous.trim_start().starts_with('#'),
                "configs/carrier.yaml:{}: `{}` has no comment above or beside it",
                n + 1,
                line.trim()
            );
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
}

#[test]
fn docs_describe_every_key() {
    let missing: Vec<_> = every_key_path()
        .into_iter()
        .filter(|p| !DOCS.contains(&format!("### `{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md needs a `### `key`` section for: {missing:?}"
    );
}

#[test]
fn docs_describe_only_real_keys() {
    let paths = every_key_path();
    for line in DOCS.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            let key = rest.split('`').next().unwrap_or_default();
            assert!(
                paths.contains(key),
                "docs/configuration.md documents `{key}`, which does not exist"
            );
        }
    }
}

#[test]
fn docs_show_real_error_output() {
    // The examples in the docs are what the code prints for that text.
    let file = Path::new("/etc/sbc/sbc.yaml");
    let text = CONTROL_OK.replace("unix:", "unixx:");
    assert!(
        DOCS.contains(&text),
        "docs/configuration.md should show:\n{text}"
    );
    let printed = Config::parse(&text, file, Role::Any)
        .unwrap_err()
        .to_string();
    assert!(
        DOCS.contains(&printed),
        "docs/configuration.md should show:\n{printed}"
    );
    let text = MEDIA_OK.replace("30000-39999", "30001-39999");
    let printed = Config::parse(&text, file, Role::Any)
        .unwrap_err()
        .to_string();
    assert!(
        DOCS.contains(&printed),
        "docs/configuration.md should show:\n{printed}"
    );
}

// ---------------------------------------------------------------------------------------
// locate

const NESTED: &str = r#"# leading comment
control:
  node_id: ctl-1
  media_nodes:
    - name: local
      unix: /run/sbc/media.sock
    - name: remote
      quic:
        address: 192.0.2.20:7400
    -
      name: third
    - {name: flow, quic: {address: "192.0.2.21:7400", ca: /ca.pem}}
media:
  interfaces: [{name: a}, {name: b}]
  rpc: {}
"#;

#[test]
fn locate_nested_mappings() {
    assert_eq!(locate(NESTED, "control"), Some((2, 1)));
    assert_eq!(locate(NESTED, "control.node_id"), Some((3, 3)));
    assert_eq!(locate(NESTED, "control.media_nodes"), Some((4, 3)));
    assert_eq!(locate(NESTED, "media"), Some((13, 1)));
}

#[test]
fn locate_sequences_of_mappings() {
    // A block item is placed at its first key.
    assert_eq!(locate(NESTED, "control.media_nodes[0]"), Some((5, 7)));
    assert_eq!(locate(NESTED, "control.media_nodes[0].unix"), Some((6, 7)));
    assert_eq!(locate(NESTED, "control.media_nodes[1]"), Some((7, 7)));
    assert_eq!(locate(NESTED, "control.media_nodes[1].quic"), Some((8, 7)));
    assert_eq!(
        locate(NESTED, "control.media_nodes[1].quic.address"),
        Some((9, 9))
    );
    // `-` alone on its line.
    assert_eq!(locate(NESTED, "control.media_nodes[2]"), Some((11, 7)));
    assert_eq!(locate(NESTED, "control.media_nodes[2].name"), Some((11, 7)));
}

#[test]
fn locate_flow_style() {
    assert_eq!(locate(NESTED, "control.media_nodes[3]"), Some((12, 7)));
    assert_eq!(locate(NESTED, "control.media_nodes[3].name"), Some((12, 8)));
    assert_eq!(
        locate(NESTED, "control.media_nodes[3].quic"),
        Some((12, 20))
    );
    assert_eq!(
        locate(NESTED, "control.media_nodes[3].quic.address"),
        Some((12, 27))
    );
    assert_eq!(
        locate(NESTED, "control.media_nodes[3].quic.ca"),
        Some((12, 55))
    );
    assert_eq!(locate(NESTED, "media.interfaces[1]"), Some((14, 27)));
    assert_eq!(locate(NESTED, "media.interfaces[1].name"), Some((14, 28)));
    assert_eq!(locate(NESTED, "media.rpc"), Some((15, 3)));

    let text = "{a: [1, [2, 3]], b: {c: d}}";
    assert_eq!(locate(text, "."), Some((1, 1)));
    assert_eq!(locate(text, "a[1]"), Some((1, 9)));
    assert_eq!(locate(text, "a[1][1]"), Some((1, 13)));
    assert_eq!(locate(text, "b.c"), Some((1, 22)));
}

#[test]
fn locate_missing_key_falls_back_to_its_nearest_ancestor() {
    assert_eq!(
        locate(NESTED, "control.media_nodes[1].quic.ca"),
        Some((8, 7))
    );
    assert_eq!(locate(NESTED, "control.media_nodes[9].name"), Some((4, 3)));
    assert_eq!(locate(NESTED, "media.rpc.unix.path"), Some((15, 3)));
    // No ancestor in the text: the document's first key.
    assert_eq!(locate(NESTED, "metrics.listen"), Some((2, 1)));
    assert_eq!(locate(NESTED, "."), Some((2, 1)));
    assert_eq!(locate(NESTED, ""), Some((2, 1)));
    // No node at all.
    assert_eq!(locate("# only a comment\n", "control"), None);
    assert_eq!(locate("", "."), None);
}

#[test]
fn locate_survives_odd_documents() {
    // A complex key does not shift the keys after it.
    let text = "? [x, y]\n: ignored\nafter: 1\n";
    assert_eq!(locate(text, "after"), Some((3, 1)));
    // Anchors and aliases.
    let text = "base: &b {q: 1}\nuse: *b\nlast: 2\n";
    assert_eq!(locate(text, "last"), Some((3, 1)));
    // A syntax error: everything before it is indexed.
    let text = "a: 1\nb:\n  c: [\n";
    assert_eq!(locate(text, "b.c"), Some((3, 3)));
    // Multi-byte characters count as one column.
    let text = "é: 1\nx: {ü: 1, y: 2}\n";
    assert_eq!(locate(text, "x.y"), Some((2, 11)));
    // Duplicate keys: the first is located, the second remembered.
    let index = PathIndex::build("a: 1\nb: 2\na: 3\n");
    assert_eq!(index.locate("a"), Some((1, 1)));
    assert_eq!(index.repeats.get("a"), Some(&(3, 1)));
}

// ---------------------------------------------------------------------------------------
// Value types

#[test]
fn human_duration_parses_each_unit() {
    let ok = |s: &str| HumanDuration::parse(s).unwrap().0;
    assert_eq!(ok("500ms"), Duration::from_millis(500));
    assert_eq!(ok("30s"), Duration::from_secs(30));
    assert_eq!(ok(" 2m "), Duration::from_secs(120));
    assert_eq!(ok("1h"), Duration::from_secs(3600));
    assert_eq!(ok("30 s"), Duration::from_secs(30));
    assert_eq!(ok("0s"), Duration::ZERO);
    // Saturates instead of overflowing.
    assert_eq!(ok("18446744073709551615h"), Duration::from_secs(u64::MAX));

    let err = |s: &str| HumanDuration::parse(s).unwrap_err();
    assert_eq!(
        err("30"),
        "a duration with a unit such as `30s`, `500ms` or `2m`, got `30`"
    );
    assert_eq!(
        err(""),
        "a duration with a unit such as `30s`, `500ms` or `2m`, got ``"
    );
    assert_eq!(
        err("s"),
        "a duration such as `30s`, `500ms` or `2m`, got `s`"
    );
    assert_eq!(
        err("-5s"),
        "a duration such as `30s`, `500ms` or `2m`, got `-5s`"
    );
    assert_eq!(
        err("1.5s"),
        "a duration unit of `ms`, `s`, `m` or `h`, got `.5s` in `1.5s`"
    );
    assert_eq!(
        err("2d"),
        "a duration unit of `ms`, `s`, `m` or `h`, got `d` in `2d`"
    );
    assert!(err("99999999999999999999s").contains("got `99999999999999999999s`"));
}

#[test]
fn human_duration_displays_in_the_largest_exact_unit_it_knows() {
    let show = |d: Duration| HumanDuration(d).to_string();
    assert_eq!(show(Duration::from_millis(1500)), "1500ms");
    assert_eq!(show(Duration::from_secs(120)), "120s");
    assert_eq!(show(Duration::ZERO), "0s");
    for s in ["250ms", "30s", "0s"] {
        assert_eq!(HumanDuration::parse(s).unwrap().to_string(), s);
    }
}

#[test]
fn port_range_parses_and_counts_pairs() {
    let r = PortRange::parse("30000-39999").unwrap();
    assert_eq!((r.low, r.high, r.pairs()), (30000, 39999, 5000));
    assert_eq!(r.to_string(), "30000-39999");
    assert_eq!(PortRange::parse("1024-1025").unwrap().pairs(), 1);
    assert_eq!(PortRange::parse("1024-1026").unwrap().pairs(), 1);
    assert_eq!(PortRange::parse(" 40000 - 40003 ").unwrap().pairs(), 2);
    assert_eq!(PortRange::parse("65534-65535").unwrap().pairs(), 1);

    let err = |s: &str| PortRange::parse(s).unwrap_err();
    assert!(err("39999-30000").ends_with("got `39999-30000`: LOW is not below HIGH"));
    assert!(err("30000-30000").ends_with(": LOW is not below HIGH"));
    assert!(err("30001-39999").ends_with(": LOW is odd, but RTP takes the even port of each pair"));
    assert!(err("1022-2000").ends_with(": LOW is below 1024"));
    for bad in [
        "30000",
        "30000-",
        "-39999",
        "a-b",
        "30000-70000",
        "30000:39999",
        "",
    ] {
        assert!(
            err(bad).ends_with(&format!("got `{bad}`")),
            "{bad}: {}",
            err(bad)
        );
    }
}

#[test]
fn file_mode_parses_octal_only() {
    let ok = |s: &str| FileMode::parse(s).unwrap().0;
    assert_eq!(ok("0660"), 0o660);
    assert_eq!(ok("660"), 0o660);
    assert_eq!(ok("0o600"), 0o600);
    assert_eq!(ok("0777"), 0o777);
    assert_eq!(ok("0"), 0);
    for bad in ["0999", "01777", "rw-rw----", "", "0o", "+660", "-1", " "] {
        let e = FileMode::parse(bad).unwrap_err();
        assert!(e.ends_with(&format!("got `{bad}`")), "{bad}: {e}");
    }
    // Written back as four octal digits, quoted (a YAML reader would take 0660 as octal
    // or decimal, depending on its YAML version).
    let yaml = serde_yaml::to_string(&FileMode(0o640)).unwrap();
    assert_eq!(yaml, "'0640'\n");
    // An unquoted 0660 still means octal 660 to us.
    let m: FileMode = serde_yaml::from_str("0660").unwrap();
    assert_eq!(m, FileMode(0o660));
}

#[test]
fn value_types_refuse_non_scalars_with_their_expectation() {
    let e = serde_yaml::from_str::<HumanDuration>("[1]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a duration such as `30s`"), "{e}");
    let e = serde_yaml::from_str::<PortRange>("{a: 1}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected a port range such as `30000-39999`"),
        "{e}"
    );
    let e = serde_yaml::from_str::<FileMode>("[]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected permission bits"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Fuzz entry point

#[test]
fn fuzz_parse_takes_anything() {
    let deep_flow = "[".repeat(10_000);
    let deep_block: String = (0..300).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    let inputs: Vec<&[u8]> = vec![
        b"",
        b"\xff\xfe",
        b"control: [",
        b"? [a]\n: b\n",
        b"a: &x [*x]\n",
        b"--- \n...\n---\ncontrol: {}\n",
        b"control:\n  media_nodes:\n    - quic: {address: '[::1]:0'}\n",
        b"\t",
        b"media:\n  interfaces:\n    - ports: 65534-65535\n      name: \xc3\xa9\n",
        deep_flow.as_bytes(),
        deep_block.as_bytes(),
        CARRIER.as_bytes(),
        DEMO.as_bytes(),
    ];
    for input in inputs {
        fuzz_parse(input);
    }
    // Prefixes of a real file (syntax errors in many places).
    for end in (0..=CARRIER.len())
        .filter(|&i| CARRIER.is_char_boundary(i))
        .step_by(41)
    {
        fuzz_parse(&CARRIER.as_bytes()[..end]);
    }
}
