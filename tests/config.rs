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
    assert_eq!(str_at(&t, "replay.max_bytes"), "64KiB");
    assert_eq!(str_at(&t, "replay.max_pending_bytes"), "1MB");
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
    assert_eq!(str_at(&t, "limits.max_frame_bytes"), "1MiB");
    assert_eq!(str_at(&t, "limits.max_upstream_frame_bytes"), "16MiB");
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
        &["poll.max_wait", "duration string", "\"30s\""],
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

// ---- check: the verdict and the units ---------------------------------------

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_says_ok_and_prints_durations_and_sizes_with_their_units() {
    let out = check(
        &format!("{UPSTREAM}[limits]\nmax_frame_bytes = 2048\nmax_open_body_bytes = 1234\n"),
        &[],
        &[],
    );
    let t = effective(&out);
    assert_eq!(stderr_of(&out).lines().last(), Some("ok"), "the verdict");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in [
        "idle_timeout = \"60s\"",
        "drain_timeout = \"10s\"",
        "max_bytes = \"4MiB\"",
        "max_upstream_frame_bytes = \"16MiB\"",
        "max_frame_bytes = \"2KiB\"",
        "max_open_body_bytes = \"1234B\"",
        "max_total_bytes = \"256MiB\"",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    // A bare byte count is read, and printed with its unit.
    assert_eq!(str_at(&t, "limits.max_frame_bytes"), "2KiB");
}

// ---- the new keys -------------------------------------------------------------

/// The defaults of the keys added for the edge's bounds, as printed.
#[test]
fn the_new_keys_have_their_documented_defaults() {
    let t = effective(&check(
        &format!("{UPSTREAM}[admin]\nlisten = \"127.0.0.1:9100\"\n"),
        &[],
        &[],
    ));
    for (key, value) in [
        ("server.drain_delay", "0s"),
        ("server.keepalive_timeout", "75s"),
        ("server.body_timeout", "30s"),
        ("server.min_recv_rate", "1KiB"),
        ("server.write_timeout", "30s"),
        ("server.min_send_rate", "1KiB"),
        ("upstream.pool_idle_timeout", "90s"),
        ("upstream.host", "browser"),
        ("replay.max_total_bytes", "256MiB"),
    ] {
        assert_eq!(str_at(&t, key), value, "{key}");
    }
    assert_eq!(get(&t, "admin.metrics_on_main").as_bool(), Some(true));
}

#[test]
fn the_new_keys_take_what_they_are_given() {
    let t = effective(&check(
        &format!(
            "{UPSTREAM}pool_idle_timeout = \"2m\"\nhost = \"upstream\"\n\
             [server]\ndrain_delay = \"5s\"\nkeepalive_timeout = \"500ms\"\n\
             body_timeout = \"1m\"\nmin_recv_rate = \"0\"\nwrite_timeout = \"7s\"\n\
             min_send_rate = \"64KiB\"\n\
             [replay]\nmax_bytes = \"8MiB\"\nmax_total_bytes = \"1GiB\"\n\
             [admin]\nlisten = \"127.0.0.1:9100\"\nmetrics_on_main = false\n"
        ),
        &[],
        &[],
    ));
    for (key, value) in [
        ("server.drain_delay", "5s"),
        ("server.keepalive_timeout", "500ms"),
        ("server.body_timeout", "60s"),
        ("server.min_recv_rate", "0"),
        ("server.write_timeout", "7s"),
        ("server.min_send_rate", "64KiB"),
        ("upstream.pool_idle_timeout", "120s"),
        ("upstream.host", "upstream"),
        ("replay.max_total_bytes", "1GiB"),
    ] {
        assert_eq!(str_at(&t, key), value, "{key}");
    }
    assert_eq!(get(&t, "admin.metrics_on_main").as_bool(), Some(false));
}

#[test]
fn the_new_durations_are_validated() {
    for key in [
        "drain_delay",
        "keepalive_timeout",
        "body_timeout",
        "write_timeout",
    ] {
        refused(
            &format!("{UPSTREAM}[server]\n{key} = \"soon\"\n"),
            &[&format!("server.{key}"), "expected a duration", "soon"],
        );
        refused(
            &format!("{UPSTREAM}[server]\n{key} = 5\n"),
            &[&format!("server.{key}"), "duration string", "\"5s\""],
        );
    }
    for key in ["keepalive_timeout", "body_timeout", "write_timeout"] {
        refused(
            &format!("{UPSTREAM}[server]\n{key} = \"0s\"\n"),
            &[&format!("server.{key}"), "greater than zero"],
        );
    }
    refused(
        &format!("{UPSTREAM}pool_idle_timeout = \"0s\"\n"),
        &["upstream.pool_idle_timeout", "greater than zero"],
    );
    refused(
        &format!("{UPSTREAM}pool_idle_timeout = 90\n"),
        &["upstream.pool_idle_timeout", "\"90s\""],
    );
    // The delay is part of the drain's timeout, so it must leave room.
    refused(
        &format!("{UPSTREAM}[server]\ndrain_delay = \"10s\"\n"),
        &[
            "server.drain_delay",
            "shorter than server.drain_timeout",
            "10s",
        ],
    );
    // Zero is a valid delay: close at once.
    let t = effective(&check(
        &format!("{UPSTREAM}[server]\ndrain_delay = \"0s\"\n"),
        &[],
        &[],
    ));
    assert_eq!(str_at(&t, "server.drain_delay"), "0s");
}

#[test]
fn the_rates_are_sizes_and_zero_switches_them_off() {
    for key in ["min_recv_rate", "min_send_rate"] {
        refused(
            &format!("{UPSTREAM}[server]\n{key} = \"fast\"\n"),
            &[&format!("server.{key}"), "expected a size", "fast"],
        );
        refused(
            &format!("{UPSTREAM}[server]\n{key} = -1\n"),
            &[&format!("server.{key}"), "expected a size"],
        );
        let t = effective(&check(
            &format!("{UPSTREAM}[server]\n{key} = 0\n"),
            &[],
            &[],
        ));
        assert_eq!(str_at(&t, &format!("server.{key}")), "0");
    }
}

#[test]
fn a_bad_host_policy_is_refused() {
    refused(
        &format!("{UPSTREAM}host = \"proxy\"\n"),
        &["upstream.host", "\"browser\"", "\"upstream\"", "proxy"],
    );
}

#[test]
fn the_total_replay_bound_holds_at_least_one_queue() {
    refused(
        &format!("{UPSTREAM}[replay]\nmax_bytes = \"4MiB\"\nmax_total_bytes = \"1MiB\"\n"),
        &["replay.max_total_bytes", "replay.max_bytes", "1MiB", "4MiB"],
    );
    // The default total (256MiB) against a larger queue is refused too.
    refused(
        &format!("{UPSTREAM}[replay]\nmax_bytes = \"512MiB\"\n"),
        &["replay.max_total_bytes", "256MiB", "512MiB"],
    );
    refused(
        &format!("{UPSTREAM}[replay]\nmax_total_bytes = 0\n"),
        &["replay.max_total_bytes", "greater than zero"],
    );
    let t = effective(&check(
        &format!("{UPSTREAM}[replay]\nmax_bytes = \"4MiB\"\nmax_total_bytes = \"4MiB\"\n"),
        &[],
        &[],
    ));
    assert_eq!(str_at(&t, "replay.max_total_bytes"), "4MiB");
}

#[test]
fn metrics_on_main_belongs_to_admin() {
    refused(
        &format!("{UPSTREAM}[admin]\nmetrics_on_main = false\n"),
        &["admin.listen", "required"],
    );
    refused(
        &format!("{UPSTREAM}[server]\nmetrics_on_main = false\n"),
        &["metrics_on_main", "unknown field"],
    );
    refused(
        &format!("{UPSTREAM}[admin]\nlisten = \"127.0.0.1:9100\"\nmetrics_on_main = \"no\"\n"),
        &["admin.metrics_on_main", "boolean"],
    );
}

/// What the open-file limit allows, computed here from the limit itself.
fn fd_bound() -> Option<usize> {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
    Some(
        usize::try_from(soft.saturating_sub(256) / 2)
            .unwrap()
            .max(1),
    )
}

#[test]
fn max_connections_defaults_below_the_open_file_limit() {
    let t = effective(&check(UPSTREAM, &[], &[]));
    let printed = get(&t, "server.max_connections").as_integer().unwrap();
    let expected = fd_bound().map_or(20_000, |b| b.min(20_000));
    assert_eq!(printed, expected as i64);
}

#[test]
fn max_connections_above_the_open_file_limit_is_refused() {
    let Some(bound) = fd_bound() else {
        // An unlimited RLIMIT_NOFILE leaves nothing to exceed.
        assert!(std::env::var("CI").is_err(), "CI runs with a file limit");
        return;
    };
    refused(
        &format!("{UPSTREAM}[server]\nmax_connections = {}\n", bound + 1),
        &[
            "server.max_connections",
            "open-file limit",
            "ulimit -n",
            &bound.to_string(),
        ],
    );
    let t = effective(&check(
        &format!("{UPSTREAM}[server]\nmax_connections = {bound}\n"),
        &[],
        &[],
    ));
    assert_eq!(
        get(&t, "server.max_connections").as_integer(),
        Some(bound as i64)
    );
}

// ---- errors a person understands --------------------------------------------

#[test]
fn a_bare_number_for_a_duration_asks_for_its_unit() {
    refused(
        &format!("{UPSTREAM}[sessions]\nidle_timeout = 60\n"),
        &["sessions.idle_timeout", "duration string", "\"60s\""],
    );
    let out = check(
        &format!("{UPSTREAM}[sessions]\nidle_timeout = 60\n"),
        &[],
        &[],
    );
    assert!(
        !stderr_of(&out).contains("expected a string"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_count_never_speaks_of_rust_types() {
    for value in ["\"many\"", "1.5", "true", "[]"] {
        let text = format!("{UPSTREAM}[sessions]\nmax_sessions = {value}\n");
        let out = check(&text, &[], &[]);
        assert_refused(&out, &text, &["sessions.max_sessions", "whole number"]);
        let stderr = stderr_of(&out);
        for word in ["i64", "u64", "usize", "f64", "integer `"] {
            assert!(!stderr.contains(word), "{value}: {word} in {stderr}");
        }
    }
}

#[test]
fn type_errors_name_the_dotted_key_even_in_routes() {
    refused(
        &format!(
            "{UPSTREAM}[[routes]]\npath = \"/a\"\nupstream = \"ws://h/a\"\n\
             [[routes]]\npath = \"/b\"\nupstream = 5\n"
        ),
        &["routes[1].upstream"],
    );
    refused(
        &format!("{UPSTREAM}[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nchain = 1\n"),
        &["server.tls.chain", "unknown field"],
    );
    refused(
        &format!("{UPSTREAM}[limits]\nmax_frame_bytes = true\n"),
        &["limits.max_frame_bytes", "a size like"],
    );
}

// ---- TLS files and listeners ------------------------------------------------

#[test]
fn tls_files_must_exist_and_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "not checked here").unwrap();
    let tls = |c: &Path, k: &Path| {
        format!(
            "{UPSTREAM}[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        )
    };
    refused(
        &tls(&cert, &key),
        &["server.tls.key", "cannot read", &key.display().to_string()],
    );
    refused(
        &tls(&dir.path().join("gone.pem"), &cert),
        &["server.tls.cert", "cannot read", "gone.pem"],
    );
    refused(
        &tls(dir.path(), &cert),
        &["server.tls.cert", "not a regular file"],
    );
    std::fs::write(&key, "not checked here").unwrap();
    let t = effective(&check(&tls(&cert, &key), &[], &[]));
    assert_eq!(str_at(&t, "server.tls.cert"), cert.display().to_string());
    assert_eq!(str_at(&t, "server.tls.key"), key.display().to_string());
}

#[test]
fn listen_addresses_must_not_clash() {
    for (main, admin) in [
        ("127.0.0.1:9100", "127.0.0.1:9100"),
        ("0.0.0.0:9100", "127.0.0.1:9100"),
        ("127.0.0.1:9100", "0.0.0.0:9100"),
        ("[::]:9100", "127.0.0.1:9100"),
    ] {
        refused(
            &format!("{UPSTREAM}[server]\nlisten = \"{main}\"\n[admin]\nlisten = \"{admin}\"\n"),
            &["admin.listen", "clashes with server.listen", main],
        );
    }
    // --listen is checked against the file's admin listener too.
    let out = check(
        &format!("{UPSTREAM}[admin]\nlisten = \"127.0.0.1:9100\"\n"),
        &["--listen", "0.0.0.0:9100"],
        &[],
    );
    assert_refused(
        &out,
        "--listen onto admin's port",
        &["admin.listen", "clashes"],
    );
    // Other ports, other hosts and port 0 (a free port each) do not clash.
    for (main, admin) in [
        ("0.0.0.0:8080", "0.0.0.0:9100"),
        ("127.0.0.1:9100", "127.0.0.2:9100"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        effective(&check(
            &format!("{UPSTREAM}[server]\nlisten = \"{main}\"\n[admin]\nlisten = \"{admin}\"\n"),
            &[],
            &[],
        ));
    }
}

// ---- --upstream and the routes ------------------------------------------------

const TWO_ROUTES: &str = "[upstream]\nurl = \"http://file.example:1\"\n\
                          [[routes]]\npath = \"/chat\"\nupstream = \"ws://file.example:1/chat\"\n\
                          [[routes]]\npath = \"/feed/\"\nupstream = \"wss://feed.example/f/\"\n\
                          [[routes]]\npath = \"/local\"\nupstream = \"ws://flag.example:2/l\"\n";

#[test]
fn upstream_override_warns_which_routes_keep_their_upstream() {
    let out = check(TWO_ROUTES, &["--upstream", "http://flag.example:2"], &[]);
    let t = effective(&out);
    // The routes are kept as written.
    let routes = t["routes"].as_array().unwrap();
    assert_eq!(
        routes[0]["upstream"].as_str(),
        Some("ws://file.example:1/chat")
    );
    let stderr = stderr_of(&out);
    let warning = stderr
        .lines()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning in {stderr}"));
    assert!(warning.contains("--upstream"), "{warning}");
    assert!(warning.contains("\"/chat\""), "{warning}");
    assert!(warning.contains("\"/feed/\""), "{warning}");
    // Already pointing where --upstream points: nothing to warn about.
    assert!(!warning.contains("\"/local\""), "{warning}");

    // The environment variable is the same override.
    let out = check(
        TWO_ROUTES,
        &[],
        &[("WSBRIDGE_UPSTREAM", "http://flag.example:2")],
    );
    effective(&out);
    assert!(stderr_of(&out).contains("\"/chat\""), "{}", stderr_of(&out));
}

#[test]
fn no_override_or_no_routes_means_no_warning() {
    let out = check(TWO_ROUTES, &[], &[]);
    effective(&out);
    assert!(!stderr_of(&out).contains("warning"), "{}", stderr_of(&out));
    let out = check(UPSTREAM, &["--upstream", "http://flag.example:2"], &[]);
    effective(&out);
    assert!(!stderr_of(&out).contains("warning"), "{}", stderr_of(&out));
}

#[test]
fn a_table_of_the_wrong_type_is_named_as_the_file_names_it() {
    for (text, key, expected) in [
        ("server = 5\n", "server", "a table of [server] keys"),
        ("routes = [5]\n", "routes[0]", "a [[routes]] table"),
    ] {
        let text = format!("{text}{UPSTREAM}");
        let out = check(&text, &[], &[]);
        assert_refused(&out, &text, &[key, expected]);
        let stderr = stderr_of(&out);
        assert!(
            !stderr.contains("Raw") && !stderr.contains("struct"),
            "{stderr}"
        );
    }
}

#[test]
fn telemetry_is_off_by_default_and_its_keys_round_trip() {
    let t = effective(&check(UPSTREAM, &[], &[]));
    assert_eq!(str_at(&t, "telemetry.otlp_endpoint"), "");
    assert_eq!(str_at(&t, "telemetry.service_name"), "wsbridge");
    assert_eq!(get(&t, "telemetry.sample_ratio").as_float(), Some(1.0));

    let given = format!(
        "{UPSTREAM}[telemetry]\notlp_endpoint = \"https://otel.example:4318/v1/traces\"\n\
         service_name = \"edge-proxy\"\nsample_ratio = 0.25\n"
    );
    let out = check(&given, &[], &[]);
    let t = effective(&out);
    assert_eq!(
        str_at(&t, "telemetry.otlp_endpoint"),
        "https://otel.example:4318/v1/traces"
    );
    assert_eq!(str_at(&t, "telemetry.service_name"), "edge-proxy");
    assert_eq!(get(&t, "telemetry.sample_ratio").as_float(), Some(0.25));
    // What check prints loads as the same configuration.
    let again = effective(&check(&String::from_utf8_lossy(&out.stdout), &[], &[]));
    assert_eq!(again, t);
}

#[test]
fn bad_telemetry_values_are_refused() {
    for (table, needles) in [
        (
            "otlp_endpoint = \"otel:4318\"",
            &["telemetry.otlp_endpoint", "http:// or https://"][..],
        ),
        (
            "otlp_endpoint = \"grpc://127.0.0.1:4317\"",
            &["telemetry.otlp_endpoint"][..],
        ),
        ("service_name = \"\"", &["telemetry.service_name"][..]),
        (
            "sample_ratio = 1.5",
            &["telemetry.sample_ratio", "0.0 to 1.0"][..],
        ),
        ("sample_ratio = -0.1", &["telemetry.sample_ratio"][..]),
        ("sample_ratio = nan", &["telemetry.sample_ratio"][..]),
        ("endpoint = \"http://x\"", &["endpoint"][..]),
    ] {
        refused(&format!("{UPSTREAM}[telemetry]\n{table}\n"), needles);
    }
}
