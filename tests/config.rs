//! Configuration, through the real binary: `wsbridge check` prints the
//! effective configuration; every bad value exits 2 naming the key and what
//! was expected; `--listen`/`--upstream` and their environment variables
//! override the file.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::WSBRIDGE_ENV;
use toml::Table;

/// The binary with none of the test's own WSBRIDGE_* variables.
fn wsbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbridge"));
    for k in WSBRIDGE_ENV {
        cmd.env_remove(k);
    }
    cmd
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// `wsbridge check --config <text> args…` with `envs`.
fn check(text: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let file = toml_file(text);
    wsbridge()
        .arg("check")
        .arg("--config")
        .arg(file.path())
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// Asserts `check` succeeded and returns its output parsed back as TOML.
fn effective(out: &Output) -> Table {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    stdout
        .parse::<Table>()
        .unwrap_or_else(|e| panic!("check printed invalid TOML ({e}):\n{stdout}"))
}

fn get<'a>(t: &'a Table, dotted: &str) -> &'a toml::Value {
    let mut parts = dotted.split('.');
    let mut v = &t[parts.next().unwrap()];
    for p in parts {
        v = &v[p];
    }
    v
}

fn str_at<'a>(t: &'a Table, dotted: &str) -> &'a str {
    get(t, dotted)
        .as_str()
        .unwrap_or_else(|| panic!("{dotted} is not a string"))
}

fn duration_at(t: &Table, dotted: &str) -> Duration {
    humantime::parse_duration(str_at(t, dotted)).unwrap()
}

const UPSTREAM: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";

/// Asserts the configuration is refused with exit status 2, and that stderr
/// holds every one of `needles` (the key's name, what was expected).
fn refused(text: &str, needles: &[&str]) {
    let out = check(text, &[], &[]);
    assert_refused(&out, text, needles);
}

fn assert_refused(out: &Output, what: &str, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what:?} should be refused with 2; stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "a refused config printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{what:?}: stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

// ---- check ------------------------------------------------------------------

#[test]
fn check_prints_the_effective_config_with_defaults() {
    let out = check(
        &format!(
            "{UPSTREAM}connect_timeout = \"750ms\"\n\
             [server]\nlisten = \"127.0.0.1:9000\"\n\
             [sessions]\nidle_timeout = \"1m30s\"\n\
             [replay]\nmax_bytes = \"64KiB\"\nmax_pending_bytes = \"1MB\"\n\
             [[routes]]\npath = \"/ws\"\nupstream = \"ws://127.0.0.1:3000/socket\"\n"
        ),
        &[],
        &[],
    );
    let t = effective(&out);
    // As written.
    assert_eq!(str_at(&t, "server.listen"), "127.0.0.1:9000");
    assert_eq!(
        str_at(&t, "upstream.url").trim_end_matches('/'),
        "http://127.0.0.1:3000"
    );
    assert_eq!(
        duration_at(&t, "upstream.connect_timeout"),
        Duration::from_millis(750)
    );
    assert_eq!(
        duration_at(&t, "sessions.idle_timeout"),
        Duration::from_secs(90)
    );
    assert_eq!(get(&t, "replay.max_bytes").as_integer(), Some(65536));
    assert_eq!(
        get(&t, "replay.max_pending_bytes").as_integer(),
        Some(1_000_000)
    );
    let routes = t["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["path"].as_str(), Some("/ws"));
    assert_eq!(
        routes[0]["upstream"].as_str(),
        Some("ws://127.0.0.1:3000/socket")
    );
    let transports: Vec<&str> = routes[0]["transports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        transports,
        ["websocket", "sse", "stream", "poll"],
        "default"
    );
    // Defaults from the contract.
    assert_eq!(str_at(&t, "server.prefix"), "/_bridge");
    assert_eq!(
        duration_at(&t, "server.drain_timeout"),
        Duration::from_secs(10)
    );
    assert_eq!(duration_at(&t, "sessions.linger"), Duration::from_secs(30));
    assert_eq!(
        duration_at(&t, "sessions.heartbeat"),
        Duration::from_secs(15)
    );
    assert_eq!(get(&t, "sessions.max_sessions").as_integer(), Some(10_000));
    assert_eq!(
        get(&t, "sessions.max_sessions_per_client").as_integer(),
        Some(0)
    );
    assert_eq!(get(&t, "replay.max_events").as_integer(), Some(1024));
    assert_eq!(str_at(&t, "replay.overflow"), "backpressure");
    assert_eq!(duration_at(&t, "poll.max_wait"), Duration::from_secs(30));
    assert_eq!(get(&t, "poll.max_events").as_integer(), Some(256));
    assert_eq!(
        get(&t, "limits.max_frame_bytes").as_integer(),
        Some(1 << 20)
    );
    assert_eq!(
        get(&t, "limits.max_upstream_frame_bytes").as_integer(),
        Some(16 << 20)
    );
    assert_eq!(
        get(&t, "security.allowed_origins").as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(get(&t, "client.inject").as_bool(), Some(false));
}

#[test]
fn the_printed_config_is_itself_a_valid_config_that_prints_the_same() {
    let first = check(
        &format!(
            "{UPSTREAM}forward_headers = [\"x-tenant\"]\n\
             [sessions]\nidle_timeout = \"1m30s\"\nheartbeat = \"500ms\"\n\
             [security]\nallowed_origins = [\"https://app.example.com\"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\n\
             [[routes]]\npath = \"/bridge/\"\nupstream = \"wss://h.example/app/\"\n\
             transports = [\"sse\", \"poll\"]\nsse_event_field = \"type\"\n\
             [admin]\nlisten = \"127.0.0.1:9100\"\n"
        ),
        &[],
        &[],
    );
    effective(&first);
    let printed = String::from_utf8(first.stdout.clone()).unwrap();
    let second = check(&printed, &[], &[]);
    effective(&second);
    assert_eq!(
        String::from_utf8(second.stdout).unwrap(),
        printed,
        "check's output does not round-trip"
    );
}

#[test]
fn the_shipped_proxy_toml_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    assert!(
        path.is_file(),
        "the repository ships a sample configuration at {}",
        path.display()
    );
    let out = wsbridge()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    effective(&out);
}

// ---- overrides --------------------------------------------------------------

const FILE_WITH_BOTH: &str = "[server]\nlisten = \"0.0.0.0:1111\"\n\
                              [upstream]\nurl = \"http://file.example:1\"\n";

#[test]
fn flags_override_the_file() {
    let t = effective(&check(FILE_WITH_BOTH, &[], &[]));
    assert_eq!(str_at(&t, "server.listen"), "0.0.0.0:1111");
    assert!(str_at(&t, "upstream.url").starts_with("http://file.example:1"));

    let t = effective(&check(
        FILE_WITH_BOTH,
        &[
            "--listen",
            "127.0.0.1:2222",
            "--upstream",
            "http://flag.example:2",
        ],
        &[],
    ));
    assert_eq!(str_at(&t, "server.listen"), "127.0.0.1:2222");
    assert!(str_at(&t, "upstream.url").starts_with("http://flag.example:2"));
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let env = [
        ("WSBRIDGE_LISTEN", "127.0.0.1:3333"),
        ("WSBRIDGE_UPSTREAM", "http://env.example:3"),
    ];
    let t = effective(&check(FILE_WITH_BOTH, &[], &env));
    assert_eq!(str_at(&t, "server.listen"), "127.0.0.1:3333");
    assert!(str_at(&t, "upstream.url").starts_with("http://env.example:3"));

    let t = effective(&check(
        FILE_WITH_BOTH,
        &["--listen", "127.0.0.1:4444"],
        &env,
    ));
    assert_eq!(str_at(&t, "server.listen"), "127.0.0.1:4444");
    assert!(str_at(&t, "upstream.url").starts_with("http://env.example:3"));
}

#[test]
fn upstream_from_a_flag_stands_in_for_a_missing_upstream_url() {
    let t = effective(&check("", &["--upstream", "http://127.0.0.1:5000"], &[]));
    assert!(str_at(&t, "upstream.url").starts_with("http://127.0.0.1:5000"));
}

#[test]
fn overrides_are_validated_like_the_file() {
    let out = check(UPSTREAM, &["--listen", "not-an-address"], &[]);
    assert_refused(
        &out,
        "--listen not-an-address",
        &["server.listen", "expected an address"],
    );
    let out = check(UPSTREAM, &[], &[("WSBRIDGE_UPSTREAM", "ftp://x")]);
    assert_refused(
        &out,
        "WSBRIDGE_UPSTREAM=ftp://x",
        &["upstream.url", "http://"],
    );
}

// ---- errors: exit 2, the key, what was expected -----------------------------

#[test]
fn a_missing_file_is_refused() {
    let out = wsbridge()
        .arg("check")
        .arg("--config")
        .arg("/nonexistent/wsbridge-test.toml")
        .output()
        .unwrap();
    assert_refused(
        &out,
        "missing file",
        &["/nonexistent/wsbridge-test.toml", "cannot read"],
    );
}

#[test]
fn unknown_keys_are_refused() {
    refused(
        &format!("{UPSTREAM}bogus = 1\n"),
        // In [upstream] after the url: a key of that section.
        &["bogus", "expected one of", "connect_timeout"],
    );
    refused(
        &format!("colour = \"blue\"\n{UPSTREAM}"),
        &["colour", "expected one of", "server"],
    );
    refused(
        &format!("{UPSTREAM}[server]\nlisten_addr = \"0.0.0.0:1\"\n"),
        &["listen_addr", "expected one of", "listen"],
    );
    refused(
        &format!("{UPSTREAM}[nonsense]\nx = 1\n"),
        &["nonsense", "expected one of"],
    );
    refused(
        &format!(
            "{UPSTREAM}[[routes]]\npath = \"/ws\"\nupstream = \"ws://h/ws\"\ntransport = [\"sse\"]\n"
        ),
        &["transport", "expected one of", "transports"],
    );
}

#[test]
fn a_missing_upstream_url_is_refused() {
    refused("", &["upstream.url", "required"]);
    refused(
        "[server]\nlisten = \"127.0.0.1:1\"\n",
        &["upstream.url", "required"],
    );
}

#[test]
fn bad_durations_are_refused() {
    refused(
        &format!("{UPSTREAM}[server]\ndrain_timeout = \"10 parsecs\"\n"),
        &["server.drain_timeout", "expected a duration", "10 parsecs"],
    );
    refused(
        &format!("{UPSTREAM}[sessions]\nidle_timeout = \"soon\"\n"),
        &["sessions.idle_timeout", "expected a duration"],
    );
    refused(
        &format!("{UPSTREAM}[sessions]\nheartbeat = \"0s\"\n"),
        &["sessions.heartbeat", "greater than zero"],
    );
    refused(
        &format!("{UPSTREAM}[poll]\nmax_wait = 30\n"),
        &["max_wait", "string"],
    );
}

#[test]
fn bad_and_zero_sizes_are_refused() {
    refused(
        &format!("{UPSTREAM}[replay]\nmax_bytes = \"4 gigglebytes\"\n"),
        &["replay.max_bytes", "expected a size", "4 gigglebytes"],
    );
    refused(
        &format!("{UPSTREAM}[limits]\nmax_frame_bytes = 0\n"),
        &["limits.max_frame_bytes", "greater than zero"],
    );
    refused(
        &format!("{UPSTREAM}[limits]\nmax_outbound_bytes = \"0KiB\"\n"),
        &["limits.max_outbound_bytes", "greater than zero"],
    );
    refused(
        &format!("{UPSTREAM}[poll]\nmax_bytes = -5\n"),
        &["poll.max_bytes", "expected a size"],
    );
}

#[test]
fn negative_and_zero_counts_are_refused() {
    refused(
        &format!("{UPSTREAM}[sessions]\nmax_sessions = -1\n"),
        &["sessions.max_sessions", "expected a positive integer", "-1"],
    );
    refused(
        &format!("{UPSTREAM}[sessions]\nmax_sessions_per_client = -3\n"),
        &["sessions.max_sessions_per_client", "expected zero or more"],
    );
    refused(
        &format!("{UPSTREAM}[replay]\nmax_events = 0\n"),
        &["replay.max_events", "expected a positive integer"],
    );
}

#[test]
fn bad_upstream_urls_are_refused() {
    for url in [
        "ftp://example.com",
        "not a url",
        "http://",
        "ws://127.0.0.1:3000",
    ] {
        refused(
            &format!("[upstream]\nurl = \"{url}\"\n"),
            &[
                "upstream.url",
                "expected a URL starting with http:// or https://",
            ],
        );
    }
    refused(
        "[upstream]\nurl = \"http://127.0.0.1:3000/app\"\n",
        &["upstream.url", "scheme and host only"],
    );
}

#[test]
fn bad_listen_addresses_are_refused() {
    for listen in ["localhost", "127.0.0.1", ":8080", "127.0.0.1:99999"] {
        refused(
            &format!("{UPSTREAM}[server]\nlisten = \"{listen}\"\n"),
            &["server.listen", "expected an address"],
        );
    }
    refused(
        &format!("{UPSTREAM}[admin]\nlisten = \"nowhere\"\n"),
        &["admin.listen", "expected an address"],
    );
}

#[test]
fn bad_prefixes_are_refused() {
    for prefix in ["bridge", "/bridge/", "/", "", "/a b", "/x?y"] {
        refused(
            &format!("{UPSTREAM}[server]\nprefix = \"{prefix}\"\n"),
            &["server.prefix", "expected a path"],
        );
    }
}

#[test]
fn bad_routes_are_refused() {
    refused(
        &format!("{UPSTREAM}[[routes]]\nupstream = \"ws://h/ws\"\n"),
        &["routes[0].path", "required"],
    );
    refused(
        &format!("{UPSTREAM}[[routes]]\npath = \"ws\"\nupstream = \"ws://h/ws\"\n"),
        &["routes[0].path", "expected a path starting with '/'"],
    );
    refused(
        &format!("{UPSTREAM}[[routes]]\npath = \"/ws\"\nupstream = \"http://h/ws\"\n"),
        &[
            "routes[0].upstream",
            "expected a URL starting with ws:// or wss://",
        ],
    );
    refused(
        &format!("{UPSTREAM}[[routes]]\npath = \"/ws\"\n"),
        &["routes[0].upstream", "required"],
    );
    refused(
        &format!(
            "{UPSTREAM}[[routes]]\npath = \"/ws\"\nupstream = \"ws://h/ws\"\n\
             transports = [\"sse\", \"carrier-pigeon\"]\n"
        ),
        &[
            "routes[0].transports",
            "carrier-pigeon",
            "expected websocket, sse, stream or poll",
        ],
    );
    refused(
        &format!(
            "{UPSTREAM}[[routes]]\npath = \"/ws\"\nupstream = \"ws://h/ws\"\n\
             [[routes]]\npath = \"/other\"\nupstream = \"ws://h/o\"\n\
             [[routes]]\npath = \"/ws\"\nupstream = \"ws://h/ws2\"\n"
        ),
        &["routes[2].path", "duplicate", "/ws"],
    );
}

#[test]
fn a_bad_overflow_is_refused() {
    refused(
        &format!("{UPSTREAM}[replay]\noverflow = \"explode\"\n"),
        &[
            "replay.overflow",
            "\"backpressure\" or \"drop-oldest\"",
            "explode",
        ],
    );
}

#[test]
fn bad_origins_are_refused() {
    for origin in [
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "*",
    ] {
        refused(
            &format!(
                "{UPSTREAM}[security]\nallowed_origins = [\"https://ok.example\", \"{origin}\"]\n"
            ),
            &["security.allowed_origins[1]", "expected an origin"],
        );
    }
}

#[test]
fn bad_trusted_proxies_are_refused() {
    for proxy in ["10.0.0.0/33", "example.com", "10.0.0"] {
        refused(
            &format!("{UPSTREAM}[security]\ntrusted_proxies = [\"{proxy}\"]\n"),
            &[
                "security.trusted_proxies[0]",
                "expected an address or network",
            ],
        );
    }
}

#[test]
fn bad_forward_header_names_are_refused() {
    for name in ["x bad", "x:colon", ""] {
        refused(
            &format!("{UPSTREAM}forward_headers = [\"x-ok\", \"{name}\"]\n"),
            &["upstream.forward_headers[1]", "header name"],
        );
    }
}
