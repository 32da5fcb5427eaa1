//! The open body and its `url`: parsing never panics, and a url that is
//! accepted never chooses the upstream host nor keeps a dot segment.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsbridge::Config;
use wsbridge::parsers::parse_open;
use wsbridge::parsers::{page_path, resolve};

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [
            Config::from_toml("[upstream]\nurl = \"http://app.internal:3000\"\n").unwrap(),
            Config::from_toml(
                "[upstream]\nurl = \"http://app.internal:3000\"\n\
                 [[routes]]\npath = \"/ws\"\nupstream = \"ws://a.internal:1/ws\"\n\
                 [[routes]]\npath = \"/bridge/\"\nupstream = \"ws://b.internal:2/app/\"\n",
            )
            .unwrap(),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // The whole body, then (so short inputs reach the url rules directly)
    // the input itself as the url.
    let url = match parse_open(data) {
        Ok(open) => open.url,
        Err(_) => match std::str::from_utf8(data) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        },
    };
    let Ok(pq) = page_path(&url) else { return };
    assert!(pq.path().starts_with('/'), "{url:?} -> {pq}");
    // `/`, `\`, `%2f` and `%5c` all separate segments (WHATWG parsers read
    // `\` as `/`; some servers decode `%2F` before resolving dots).
    let decoded = pq
        .path()
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace('\\', "/")
        .replace("%2f", "/")
        .replace("%5c", "/");
    for seg in decoded.split('/') {
        assert!(seg != "." && seg != "..", "{url:?} -> {pq}");
    }
    for config in configs() {
        if let Some(target) = resolve(config, &pq) {
            let authority = target.upstream.authority().map(|a| a.as_str().to_owned());
            assert!(
                matches!(
                    authority.as_deref(),
                    Some("app.internal:3000" | "a.internal:1" | "b.internal:2")
                ),
                "{url:?} reached {authority:?}"
            );
            if authority.as_deref() == Some("b.internal:2") {
                assert!(target.upstream.path().starts_with("/app/"));
            }
        }
    }
});
