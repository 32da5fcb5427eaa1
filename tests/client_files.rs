//! The JavaScript client files: served compressed (gzip or brotli by
//! `Accept-Encoding`, `Vary: Accept-Encoding` always), revalidated by the
//! ETag of the coding sent, and byte-identical to the npm package's
//! `clients/js/dist/client.js` and `client.mjs` (built by
//! `node clients/js/build.mjs`; without it the identity test is skipped,
//! unless `CI=true`, where it fails).
//!
//!     cargo test --test client_files

mod support;

use std::io::Read as _;
use std::path::PathBuf;

use http::StatusCode;
use support::{Backend, Proxy};

const FILES: [&str; 2] = ["client.js", "client.mjs"];

async fn get(proxy: &Proxy, file: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = proxy.http.get(proxy.url(&format!("/_bridge/{file}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn varies_on_accept_encoding(resp: &reqwest::Response) -> bool {
    resp.headers().get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
    })
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        other => panic!("unexpected coding {other}"),
    }
    .unwrap_or_else(|e| panic!("{coding} body does not decode: {e}"));
    out
}

#[tokio::test]
async fn client_files_are_compressed_by_accept_encoding() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "").await;
    for file in FILES {
        let plain = get(&proxy, file, &[]).await;
        assert_eq!(plain.status(), StatusCode::OK);
        assert_eq!(header(&plain, "content-encoding"), None, "{file}");
        assert!(varies_on_accept_encoding(&plain), "{file}: no Vary");
        let plain_etag = header(&plain, "etag").expect("etag");
        let plain = plain.bytes().await.unwrap();
        assert!(plain.starts_with(b"/*! wsbridge client"), "{file}");

        for (accept, coding) in [
            ("gzip, deflate, br, zstd", "br"),
            ("br", "br"),
            ("gzip", "gzip"),
            ("br;q=0, gzip;q=0.5", "gzip"),
        ] {
            let resp = get(&proxy, file, &[("accept-encoding", accept)]).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(
                header(&resp, "content-encoding").as_deref(),
                Some(coding),
                "{file} with Accept-Encoding: {accept}"
            );
            assert!(varies_on_accept_encoding(&resp), "{file}: no Vary");
            assert_eq!(
                header(&resp, "content-type").as_deref(),
                Some("text/javascript; charset=utf-8")
            );
            let etag = header(&resp, "etag").expect("etag");
            assert_ne!(etag, plain_etag, "each coding has its own strong ETag");
            let body = resp.bytes().await.unwrap();
            assert!(
                body.len() < plain.len() / 2,
                "{file} {coding}: {}",
                body.len()
            );
            assert_eq!(decode(coding, &body), plain, "{file} {coding}");

            // Revalidation with the tag of the coding sent.
            let again = get(
                &proxy,
                file,
                &[("accept-encoding", accept), ("if-none-match", &etag)],
            )
            .await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{file} {coding}");
            assert!(varies_on_accept_encoding(&again));
        }

        let none = get(&proxy, file, &[("accept-encoding", "identity, br;q=0")]).await;
        assert_eq!(header(&none, "content-encoding"), None);
        assert_eq!(none.bytes().await.unwrap(), plain);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn npm_dist_is_byte_identical_to_the_served_files() {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js/dist");
    if !dist.join("client.mjs").exists() {
        let why = format!(
            "{} is missing: run `node clients/js/build.mjs`",
            dist.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("SKIPPED npm dist identity check: {why}");
        return;
    }
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "").await;
    for file in FILES {
        let served = get(&proxy, file, &[]).await.bytes().await.unwrap();
        let built = std::fs::read(dist.join(file)).unwrap();
        if served != built {
            let line = served
                .split(|&b| b == b'\n')
                .zip(built.split(|&b| b == b'\n'))
                .position(|(a, b)| a != b)
                .map_or("the end".to_owned(), |i| format!("line {}", i + 1));
            panic!(
                "clients/js/dist/{file} ({} bytes) differs from /_bridge/{file} ({} bytes) at {line}: \
                 rebuild with `node clients/js/build.mjs`, or align its heads and tails with src/client/mod.rs",
                built.len(),
                served.len()
            );
        }
    }
    proxy.shutdown().await;
}
