//! `client.inject = true`: HTML pages passing through get the client and the
//! WebSocket shim at the start of their `<head>`, streamed as they arrive,
//! decoded when compressed, carrying the page's CSP nonce; every other
//! response, and every page when `inject` is off, passes byte for byte.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use support::{Backend, HttpBackend, PATIENCE, Proxy, body};

const INJECT: &str = "[client]\ninject = true\n";

/// What goes in with the default prefix and no nonce.
const TAGS: &str = "<script src=\"/_bridge/client.js\"></script>\
    <script>WsBridge.installWebSocketShim(undefined,{\"prefix\":\"/_bridge\"});</script>";

const APP: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
    <title>chat</title>\n<script>const ws = new WebSocket(`ws://${location.host}/ws`);</script>\n\
    </head>\n<body>\n<p>Hello</p>\n</body>\n</html>\n";

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// An HTML response with `headers` added.
fn html(page: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
    let mut r = Response::new(body(page));
    r.headers_mut()
        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// `page` as it should come out: the tags right after the first `<head>`.
fn injected(page: &str) -> String {
    let at = page.find("<head>").expect("a head") + "<head>".len();
    format!("{}{TAGS}{}", &page[..at], &page[at..])
}

/// A backend answering every request with `make()`.
async fn serving(make: impl Fn() -> Reply + Clone + Send + Sync + 'static) -> HttpBackend {
    HttpBackend::start(move |_req| {
        let make = make.clone();
        async move { make() }
    })
    .await
}

async fn get(proxy: &Proxy, path: &str) -> reqwest::Response {
    proxy.http.get(proxy.url(path)).send().await.unwrap()
}

async fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder};
    let mut out = Vec::new();
    match coding {
        "gzip" => GzipEncoder::new(data).read_to_end(&mut out).await,
        "deflate" => ZlibEncoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliEncoder::new(data).read_to_end(&mut out).await,
        other => panic!("no encoder for {other}"),
    }
    .unwrap();
    out
}

#[tokio::test]
async fn the_scripted_backends_page_gets_the_client_in_its_head() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, INJECT).await;
    let resp = get(&proxy, "/page").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert!(resp.headers().get("content-length").is_none());
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        injected("<!doctype html><html><head><title>t</title></head><body>page</body></html>")
    );
    assert_eq!(text.matches("client.js").count(), 1);
    assert_eq!(text.matches("installWebSocketShim").count(), 1);
}

#[tokio::test]
async fn an_app_page_at_the_root_gets_the_client_and_loses_its_validators() {
    let backend = serving(|| {
        html(
            APP,
            &[
                ("content-length", &APP.len().to_string()),
                ("etag", "\"v1\""),
                ("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
                ("accept-ranges", "bytes"),
                ("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT"),
                ("x-app", "kept"),
            ],
        )
    })
    .await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    let resp = get(&proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    for gone in ["content-length", "etag", "content-md5", "accept-ranges"] {
        assert!(h.get(gone).is_none(), "{gone} should be gone: {h:?}");
    }
    assert_eq!(h["last-modified"], "Tue, 15 Nov 1994 12:45:26 GMT");
    assert_eq!(h["x-app"], "kept");
    assert_eq!(h["transfer-encoding"], "chunked");
    let text = resp.text().await.unwrap();
    assert_eq!(text, injected(APP));
    // The shim runs before the page's own script opens its WebSocket.
    assert!(text.find("installWebSocketShim").unwrap() < text.find("new WebSocket").unwrap());
}

#[tokio::test]
async fn with_inject_off_pages_pass_byte_identical() {
    let backend = serving(|| html(APP, &[("etag", "\"v1\"")])).await;
    let proxy = Proxy::start_toml(&backend.config("")).await;
    let resp = get(&proxy, "/").await;
    assert_eq!(resp.headers()["content-length"], APP.len().to_string());
    assert_eq!(resp.headers()["etag"], "\"v1\"");
    assert_eq!(resp.bytes().await.unwrap(), APP.as_bytes());
}

#[tokio::test]
async fn a_custom_prefix_is_in_both_tags() {
    let backend = serving(|| html(APP, &[])).await;
    let proxy = Proxy::start_toml(
        &backend.config("[server]\nprefix = \"/wsb\"\n[client]\ninject = true\n"),
    )
    .await;
    let text = get(&proxy, "/").await.text().await.unwrap();
    assert!(
        text.contains(
            "<head><script src=\"/wsb/client.js\"></script>\
             <script>WsBridge.installWebSocketShim(undefined,{\"prefix\":\"/wsb\"});</script>"
        ),
        "{text}"
    );
    // And the client is there to load.
    let js = get(&proxy, "/wsb/client.js").await;
    assert_eq!(js.status(), StatusCode::OK);
}

#[tokio::test]
async fn compressed_pages_come_out_decoded_and_rewritten() {
    // Big enough to decode into many chunks.
    let page = format!(
        "<!doctype html><html><head><title>big</title></head><body>{}</body></html>",
        "<p>row of text that compresses well</p>\n".repeat(10_000)
    );
    for coding in ["gzip", "deflate", "br"] {
        let compressed = Bytes::from(compress(coding, page.as_bytes()).await);
        let backend = serving(move || {
            html(
                compressed.clone(),
                &[
                    ("content-encoding", coding),
                    ("content-length", &compressed.len().to_string()),
                    ("vary", "Accept-Encoding"),
                ],
            )
        })
        .await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = get(&proxy, "/").await;
        assert_eq!(resp.status(), StatusCode::OK, "{coding}");
        let h = resp.headers().clone();
        assert!(h.get("content-encoding").is_none(), "{coding}: {h:?}");
        assert!(h.get("content-length").is_none(), "{coding}: {h:?}");
        assert_eq!(h["vary"], "Accept-Encoding");
        let text = resp.text().await.unwrap();
        assert!(text == injected(&page), "{coding}: wrong body");
    }
}

#[tokio::test]
async fn pages_in_unknown_codings_pass_untouched() {
    const OPAQUE: &[u8] = b"\x28\xb5\x2f\xfd <html><head> opaque";
    let backend = serving(|| html(OPAQUE, &[("content-encoding", "zstd")])).await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    let resp = get(&proxy, "/").await;
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    assert_eq!(resp.bytes().await.unwrap(), OPAQUE);
}

#[tokio::test]
async fn a_csp_nonce_is_copied_onto_both_tags() {
    let csp = "default-src 'self'; script-src 'nonce-Zm9vYmFy+/==' 'strict-dynamic'";
    let backend = serving(move || html(APP, &[("content-security-policy", csp)])).await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    let resp = get(&proxy, "/").await;
    assert_eq!(resp.headers()["content-security-policy"], csp);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(
            "<head><script src=\"/_bridge/client.js\" nonce=\"Zm9vYmFy+/==\"></script>\
             <script nonce=\"Zm9vYmFy+/==\">WsBridge.installWebSocketShim("
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_csp_that_would_refuse_the_scripts_leaves_the_page_alone() {
    for csp in [
        "script-src 'self' 'sha256-B2yPHKaXnvFWtRChIbabYmUBFZdVfKKXHbWtWidDVF8='",
        "default-src 'self'",
        "script-src 'none'",
    ] {
        let backend = serving(move || {
            html(
                APP,
                &[
                    ("content-security-policy", csp),
                    ("content-length", &APP.len().to_string()),
                ],
            )
        })
        .await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = get(&proxy, "/").await;
        assert_eq!(resp.headers()["content-length"], APP.len().to_string());
        assert_eq!(resp.bytes().await.unwrap(), APP.as_bytes(), "{csp}");
    }
    // A policy that allows both as they are needs no nonce.
    let csp = "script-src 'self' 'unsafe-inline'";
    let backend = serving(move || html(APP, &[("content-security-policy", csp)])).await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    assert_eq!(get(&proxy, "/").await.text().await.unwrap(), injected(APP));
}

#[tokio::test]
async fn pages_without_a_head_get_the_client_before_their_first_element() {
    for (page, expected) in [
        (
            "<!doctype html><title>x</title><p>hi",
            format!("<!doctype html>{TAGS}<title>x</title><p>hi"),
        ),
        (
            "<html><body><p>hi</p></body></html>",
            format!("<html>{TAGS}<body><p>hi</p></body></html>"),
        ),
        ("plain words, no element", "plain words, no element".into()),
    ] {
        let backend = serving(move || html(page, &[])).await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        assert_eq!(get(&proxy, "/").await.text().await.unwrap(), expected);
    }
}

#[tokio::test]
async fn other_responses_pass_untouched() {
    let page = "<html><head></head></html>";
    let cases: Vec<(&str, u16, &str)> = vec![
        (
            "application/json",
            200,
            "{\"html\":\"<html><head></head>\"}",
        ),
        ("text/plain", 200, page),
        ("text/html", 404, page),
        ("text/html", 500, page),
        ("text/html", 206, page),
    ];
    for (ct, status, text) in cases {
        let backend = serving(move || {
            let mut r = html(text, &[]);
            r.headers_mut().insert("content-type", ct.parse().unwrap());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        })
        .await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = get(&proxy, "/").await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(
            resp.bytes().await.unwrap(),
            text.as_bytes(),
            "{ct} {status}"
        );
    }
    for (name, value) in [
        ("cache-control", "no-transform"),
        ("content-disposition", "attachment; filename=\"page.html\""),
    ] {
        let backend = serving(move || html(page, &[(name, value)])).await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = get(&proxy, "/").await;
        assert_eq!(resp.bytes().await.unwrap(), page.as_bytes(), "{name}");
    }
}

#[tokio::test]
async fn bodiless_answers_stay_bodiless() {
    for status in [204u16, 304] {
        let backend = serving(move || {
            let mut r = html("", &[("etag", "\"v1\"")]);
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        })
        .await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = get(&proxy, "/").await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["etag"], "\"v1\"");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // HEAD, plain and compressed: headers as a GET would have them, no body.
    for coding in ["identity", "gzip"] {
        let compressed = Bytes::from(compress("gzip", APP.as_bytes()).await);
        let backend = HttpBackend::start(move |req| {
            let compressed = compressed.clone();
            async move {
                let page = if coding == "gzip" {
                    compressed
                } else {
                    Bytes::from(APP)
                };
                let len = page.len().to_string();
                let page = if req.method() == http::Method::HEAD {
                    Bytes::new()
                } else {
                    page
                };
                let mut r = html(page, &[("content-length", &len)]);
                if coding == "gzip" {
                    r.headers_mut()
                        .insert("content-encoding", "gzip".parse().unwrap());
                }
                r
            }
        })
        .await;
        let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
        let resp = proxy.http.head(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{coding}");
        assert!(resp.headers().get("content-length").is_none(), "{coding}");
        assert!(resp.headers().get("content-encoding").is_none(), "{coding}");
        assert!(resp.bytes().await.unwrap().is_empty(), "{coding}");
        // The connection is still good for the GET.
        let text = get(&proxy, "/").await.text().await.unwrap();
        assert_eq!(text, injected(APP), "{coding}");
    }
}

#[tokio::test]
async fn the_head_goes_out_before_the_backend_sends_the_rest() {
    let head = "<!doctype html><html><head><title>slow</title>";
    let rest = "</head><body>late</body></html>";
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let backend = serving(move || {
        let gate = Arc::clone(&gate);
        let chunks = futures_util::stream::unfold(0, move |step| {
            let gate = Arc::clone(&gate);
            async move {
                let chunk = match step {
                    0 => head,
                    1 => {
                        gate.notified().await;
                        rest
                    }
                    _ => return None,
                };
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                    step + 1,
                ))
            }
        });
        let mut r = html("", &[]);
        *r.body_mut() = StreamBody::new(chunks).boxed();
        r
    })
    .await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    let mut resp = get(&proxy, "/").await;
    let mut seen = Vec::new();
    let first = format!("<!doctype html><html><head>{TAGS}<title>slow</title>");
    while seen.len() < first.len() {
        let chunk = tokio::time::timeout(PATIENCE, resp.chunk())
            .await
            .expect("the head is sent while the backend still holds the rest")
            .unwrap()
            .expect("more body");
        seen.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&seen), first);
    release.notify_one();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        injected(&format!("{head}{rest}"))
    );
}

#[tokio::test]
async fn a_big_page_in_many_odd_chunks_comes_out_whole() {
    let page: Arc<String> = Arc::new(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>big</title></head><body>{}</body></html>",
        (0..60_000)
            .map(|i| format!("<p id=\"r{i}\">row {i}</p>\n"))
            .collect::<String>()
    ));
    let source = Arc::clone(&page);
    let backend = serving(move || {
        let page = Bytes::from(source.as_bytes().to_vec());
        // Three-byte chunks over the first tags (so `<head>` is split), then
        // chunks of odd sizes.
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < page.len() {
            let size = if at < 120 { 3 } else { 7919 };
            let end = (at + size).min(page.len());
            chunks.push(Ok::<_, Infallible>(Frame::data(page.slice(at..end))));
            at = end;
        }
        let mut r = html("", &[]);
        *r.body_mut() = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        r
    })
    .await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    let text = get(&proxy, "/").await.text().await.unwrap();
    assert!(text.len() > 1_000_000);
    assert!(text == injected(&page), "the big page differs");
}

#[tokio::test]
async fn a_corrupt_compressed_page_fails_its_response_not_the_proxy() {
    let backend = HttpBackend::start(|req| async move {
        if req.uri().path() == "/broken" {
            html(
                &b"\x1f\x8b\x08\x00 this is not gzip at all"[..],
                &[("content-encoding", "gzip")],
            )
        } else {
            html(APP, &[])
        }
    })
    .await;
    let proxy = Proxy::start_toml(&backend.config(INJECT)).await;
    // The first chunk fails, so the connection may close before or after the
    // headers went out; either way the browser sees a broken response, not a
    // silently short page.
    let outcome = tokio::time::timeout(PATIENCE, async {
        let resp = proxy.http.get(proxy.url("/broken")).send().await?;
        resp.bytes().await
    })
    .await
    .expect("the broken response ends");
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(get(&proxy, "/").await.text().await.unwrap(), injected(APP));
}
