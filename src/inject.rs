//! Injection of the JavaScript client into HTML pages that pass through
//! (`client.inject = true`), so an app page that has never heard of wsbridge
//! gets `WebSocket` replaced by the bridge before its own scripts run.
//!
//! What goes in, as the first thing the page's scripts can see:
//!
//! ```html
//! <script src="/_bridge/client.js"></script><script>WsBridge.installWebSocketShim(undefined,{"prefix":"/_bridge"});</script>
//! ```
//!
//! (with `server.prefix` in place of `/_bridge`, since the shim's sockets
//! need it too, and `nonce="…"` on both tags when the page's CSP has one).
//!
//! Where: right after `<head>` when the page has one. A page without a
//! `<head>` tag (legal HTML) gets it just before its first element other
//! than `<html>`, be it `<body>`, `<title>` or `<div>`: the HTML parser puts
//! a script met there into the implied head all the same. A page with no
//! element at all is left as it is.
//!
//! Which responses: 2xx `text/html` with a body to rewrite (not 204, 205,
//! 206), not a download (`Content-Disposition: attachment`), not marked
//! `Cache-Control: no-transform`, in UTF-8 or another ASCII-compatible
//! charset, coded identity, gzip, deflate or br (the last three are decoded
//! on the way and go out decoded). A `Content-Security-Policy` nonce is
//! copied onto both tags; a policy that would refuse them otherwise leaves
//! the page untouched. Everything else passes byte for byte. A rewritten
//! page loses `Content-Length` (it goes out chunked), its validators and
//! digests (`ETag`, `Content-MD5`, …) and `Accept-Ranges`, as the body differs.
//!
//! Streaming: the page is never buffered whole. Each chunk goes through a
//! `lol_html` rewriter as it arrives and what it emits goes out at once.
//! Once the tags are in, the next element makes the handler bail out on
//! purpose: `lol_html` then flushes what it holds unchanged and the rest of
//! the page is copied without parsing. The rewriter is lol_html's `Send`
//! flavour, so the body stays `Send` and runs on the connection's task.
//! Backpressure is the body's own: the upstream is read one chunk at a time,
//! only when hyper asks for more, so a slow browser slows the upstream read.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use lol_html::errors::RewritingError;
use lol_html::html_content::ContentType;
use lol_html::{HandlerResult, MemorySettings, OutputSink, Selector};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{Body, BoxError};

/// Most memory one page's HTML parser may hold (a start tag split across
/// chunks is buffered until it is whole). Only the first elements of a page
/// are parsed, so this is never reached by a sane page; beyond it the page
/// passes untouched rather than growing the buffer.
const MAX_PARSER_MEMORY: usize = 256 * 1024;

/// Size of the chunks a compressed page is decoded into: bounds the memory a
/// highly compressed page (a zip bomb) can take at once.
const DECODED_CHUNK: usize = 16 * 1024;

/// Headers that describe the exact bytes of the upstream's body, false once
/// the page is rewritten.
const BODY_BOUND: [HeaderName; 7] = [
    header::CONTENT_LENGTH,
    header::ETAG,
    header::ACCEPT_RANGES,
    HeaderName::from_static("content-md5"),
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("digest"),
];

/// Returns the response with the client injected when it is an HTML page
/// that can take it (see the module doc), otherwise the response unchanged.
pub fn rewrite(resp: Response<Body>, prefix: &str) -> Response<Body> {
    let Some(plan) = plan(resp.status(), resp.headers()) else {
        return resp;
    };
    let Some(rewriter) = Injector::rewriter(&snippet(prefix, plan.nonce.as_deref())) else {
        return resp;
    };
    tracing::debug!(coding = ?plan.coding, nonce = plan.nonce.is_some(), "injecting the client");
    let (mut parts, body) = resp.into_parts();
    for name in &BODY_BOUND {
        parts.headers.remove(name);
    }
    if plan.coding != Coding::Identity {
        parts.headers.remove(header::CONTENT_ENCODING);
    }
    let injector = Injector::new(decoded(body, plan.coding), rewriter);
    let body = StreamBody::new(injector.map_ok(Frame::data)).boxed_unsync();
    Response::from_parts(parts, body)
}

/// The tags to inject; `prefix` is the validated `server.prefix`, escaped
/// anyway since it lands in an attribute and in a script.
fn snippet(prefix: &str, nonce: Option<&str>) -> String {
    // A nonce is base64 by the time it gets here (see `csp`): no escaping.
    let nonce = nonce.map_or(String::new(), |n| format!(" nonce=\"{n}\""));
    let src = html_attribute(&format!("{prefix}/client.js"));
    // A JSON string is a JS string; `<` is escaped too so that nothing in it
    // can close the script element.
    let options = serde_json::json!({ "prefix": prefix })
        .to_string()
        .replace('<', "\\u003c");
    format!(
        "<script src=\"{src}\"{nonce}></script>\
         <script{nonce}>WsBridge.installWebSocketShim(undefined,{options});</script>"
    )
}

fn html_attribute(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How the upstream coded the page's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    /// HTTP's `deflate` is the zlib format (RFC 9110 8.4.1.2).
    Deflate,
    Brotli,
}

/// What to do to a page that will be rewritten.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    coding: Coding,
    nonce: Option<String>,
}

/// Decides whether a response gets the client, from its status and
/// headers; `None` leaves it untouched. HTML pages left alone are logged at
/// debug with the reason, since an operator who turned `inject` on will
/// wonder why a page works without the bridge.
fn plan(status: StatusCode, headers: &HeaderMap) -> Option<Plan> {
    if !is_html(headers) {
        return None;
    }
    let skip = |why: &str| {
        tracing::debug!(%status, why, "HTML page left without the client");
        None
    };
    // 204/205 have no body; 206 is a slice of one, so there is no head to
    // find and a rewrite would break the ranges; 304 and errors are not 2xx.
    if !status.is_success()
        || [
            StatusCode::NO_CONTENT,
            StatusCode::RESET_CONTENT,
            StatusCode::PARTIAL_CONTENT,
        ]
        .contains(&status)
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return None;
    }
    if !ascii_compatible(headers) {
        return skip("charset is not ASCII-compatible");
    }
    if has_token(headers, header::CONTENT_DISPOSITION, ';', "attachment") {
        return skip("a download (Content-Disposition: attachment)");
    }
    // RFC 9111 5.2.2.6: an intermediary must not change such a body.
    if has_token(headers, header::CACHE_CONTROL, ',', "no-transform") {
        return skip("Cache-Control: no-transform");
    }
    let Some(coding) = coding(headers) else {
        return skip("unsupported Content-Encoding");
    };
    let mut policies = Vec::new();
    for value in headers.get_all(header::CONTENT_SECURITY_POLICY) {
        match value.to_str() {
            Ok(v) => policies.push(v),
            Err(_) => return skip("unreadable Content-Security-Policy"),
        }
    }
    let nonce = match csp::verdict(policies) {
        csp::Verdict::Allowed => None,
        csp::Verdict::Nonce(n) => Some(n),
        csp::Verdict::Refused => {
            return skip("Content-Security-Policy would refuse the client's scripts");
        }
    };
    Some(Plan { coding, nonce })
}

fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/html"))
}

/// UTF-16 and UTF-32 pages would be corrupted by ASCII tags; every other
/// charset a browser knows keeps ASCII as it is, which is all the rewriter
/// needs (it reads tag names and writes ASCII).
fn ascii_compatible(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    !content_type.split(';').skip(1).any(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return false;
        };
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        name.trim().eq_ignore_ascii_case("charset")
            && (value.starts_with("utf-16") || value.starts_with("utf-32"))
    })
}

/// Whether any `name` header holds `token` in its `sep`-separated list
/// (case-insensitive, parameters after `=` ignored).
fn has_token(headers: &HeaderMap, name: HeaderName, sep: char, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(sep))
        .any(|t| {
            let t = t.split('=').next().unwrap_or_default();
            t.trim().eq_ignore_ascii_case(token)
        })
}

/// The page's one content coding, or `None` for codings this module cannot
/// undo (zstd, compress, stacked codings).
fn coding(headers: &HeaderMap) -> Option<Coding> {
    let mut tokens = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        for token in value.to_str().ok()?.split(',') {
            let token = token.trim().to_ascii_lowercase();
            if !token.is_empty() && token != "identity" {
                tokens.push(token);
            }
        }
    }
    match tokens.as_slice() {
        [] => Some(Coding::Identity),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        },
        _ => None,
    }
}

type Chunks = BoxStream<'static, Result<Bytes, BoxError>>;

/// The compressed bytes, as the decoders read them.
type Compressed = StreamReader<BoxStream<'static, std::io::Result<Bytes>>, Bytes>;

/// The page's bytes, decoded when they are compressed. Trailers, which an
/// HTML page does not have in practice, are dropped.
fn decoded(body: Body, coding: Coding) -> Chunks {
    let raw = body.into_data_stream();
    let decode: fn(Compressed) -> Chunks = match coding {
        Coding::Identity => return raw.boxed(),
        Coding::Gzip => |r| {
            let mut decoder = GzipDecoder::new(r);
            // Concatenated gzip members are one valid body (RFC 1952).
            decoder.multiple_members(true);
            chunks(decoder)
        },
        Coding::Deflate => |r| chunks(ZlibDecoder::new(r)),
        Coding::Brotli => |r| chunks(BrotliDecoder::new(r)),
    };
    // The decoders call an empty input a truncated stream; an empty body
    // (the answer to a HEAD) is just empty, so look at the first chunk first.
    let mut raw = Box::pin(
        raw.try_filter(|chunk| std::future::ready(!chunk.is_empty()))
            .peekable(),
    );
    stream::once(async move {
        if raw.as_mut().peek().await.is_none() {
            return stream::empty().boxed();
        }
        decode(StreamReader::new(
            raw.map_err(std::io::Error::other).boxed(),
        ))
    })
    .flatten()
    .boxed()
}

/// A decoder's output in chunks of at most [`DECODED_CHUNK`] bytes.
fn chunks(decoder: impl AsyncRead + Send + 'static) -> Chunks {
    ReaderStream::with_capacity(decoder, DECODED_CHUNK)
        .map_err(BoxError::from)
        .boxed()
}

/// Where the rewriter writes: shared with the [`Injector`], which takes what
/// was written after each chunk it feeds. The lock is only ever held inside
/// synchronous code, never across an await.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<BytesMut>>);

impl Output {
    fn lock(&self) -> MutexGuard<'_, BytesMut> {
        // A poisoned lock still holds valid bytes.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Bytes {
        self.lock().split().freeze()
    }
}

impl OutputSink for Output {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.lock().extend_from_slice(chunk);
    }
}

type Rewriter = lol_html::send::HtmlRewriter<'static, Output>;

/// The handler's way to stop the parser once the tags are in: with graceful
/// bail-out on, lol_html flushes every byte it holds unchanged and returns
/// this error, after which the page is copied as it comes.
#[derive(Debug)]
struct Placed;

impl fmt::Display for Placed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client injected")
    }
}

impl std::error::Error for Placed {}

enum Stage {
    /// Parsing until the tags are placed.
    Parsing(Box<Rewriter>),
    /// Tags placed, or given up on: the rest of the page is copied as is.
    Copying,
    Finished,
}

/// The rewritten page, as a stream of chunks: one input chunk in, what the
/// rewriter made of it out, never more than that held at once.
struct Injector {
    input: Chunks,
    stage: Stage,
    output: Output,
    /// No bytes seen yet: the first ones are checked for a UTF-16 BOM.
    at_start: bool,
}

impl Injector {
    fn rewriter(snippet: &str) -> Option<(Rewriter, Output)> {
        // `*`: the first element decides where the tags go (see the module doc).
        let selector: Selector = "*".parse().ok()?;
        let snippet = snippet.to_owned();
        let mut placed = false;
        let handler = move |el: &mut lol_html::send::Element<'_, '_>| -> HandlerResult {
            if placed {
                return Err(Box::new(Placed));
            }
            match el.tag_name().as_str() {
                // Its first child tells whether there is a head.
                "html" => return Ok(()),
                "head" => el.prepend(&snippet, ContentType::Html),
                _ => el.before(&snippet, ContentType::Html),
            }
            placed = true;
            Ok(())
        };
        let settings = lol_html::send::Settings::new_send()
            // Strict mode refuses markup it cannot parse without a DOM; the
            // handler only looks at the first tags, which never are such.
            .with_strict(false)
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(MAX_PARSER_MEMORY)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            )
            .with_graceful_bail_out_on_content_handler_error(true)
            .append_element_content_handler((
                Cow::Owned(selector),
                lol_html::send::ElementContentHandlers::default().element(handler),
            ));
        let output = Output::default();
        Some((Rewriter::new(settings, output.clone()), output))
    }

    fn new(input: Chunks, (rewriter, output): (Rewriter, Output)) -> Injector {
        Injector {
            input,
            stage: Stage::Parsing(Box::new(rewriter)),
            output,
            at_start: true,
        }
    }

    /// Feeds one chunk; returns what is ready to go out (maybe nothing yet).
    fn feed(&mut self, chunk: Bytes) -> Result<Bytes, BoxError> {
        let at_start = self.at_start;
        self.at_start &= chunk.is_empty();
        let Stage::Parsing(rewriter) = &mut self.stage else {
            return Ok(chunk);
        };
        if at_start && (chunk.starts_with(b"\xFF\xFE") || chunk.starts_with(b"\xFE\xFF")) {
            tracing::debug!("UTF-16 page left without the client");
            self.stage = Stage::Copying;
            return Ok(chunk);
        }
        if let Err(e) = rewriter.write(&chunk) {
            self.stop(e)?;
        }
        Ok(self.output.take())
    }

    /// The input ended: flushes the parser.
    fn end(&mut self) -> Result<Bytes, BoxError> {
        if let Stage::Parsing(rewriter) = std::mem::replace(&mut self.stage, Stage::Finished)
            && let Err(e) = rewriter.end()
        {
            self.stop(e)?;
        }
        self.stage = Stage::Finished;
        Ok(self.output.take())
    }

    /// The rewriter stopped. After a graceful bail-out it has flushed every
    /// byte it held, so the page goes on unparsed; any other error lost
    /// bytes, and the response must fail rather than arrive corrupt.
    fn stop(&mut self, e: RewritingError) -> Result<(), BoxError> {
        match &e {
            RewritingError::ContentHandlerError(inner) if inner.is::<Placed>() => {}
            RewritingError::ContentHandlerError(_) | RewritingError::MemoryLimitExceeded(_) => {
                tracing::debug!(error = %e, "HTML page left without the client");
            }
            _ => {
                tracing::debug!(error = %e, "HTML rewriting failed");
                self.stage = Stage::Finished;
                return Err(e.into());
            }
        }
        self.stage = Stage::Copying;
        Ok(())
    }
}

impl Stream for Injector {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if matches!(this.stage, Stage::Finished) {
                return Poll::Ready(None);
            }
            let result = match ready!(this.input.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.feed(chunk),
                Some(Err(e)) => {
                    this.stage = Stage::Finished;
                    Err(e)
                }
                None => this.end(),
            };
            match result {
                // The parser is holding a tag split across chunks: read on.
                Ok(out) if out.is_empty() => continue,
                other => return Poll::Ready(Some(other)),
            }
        }
    }
}

/// Just enough Content Security Policy (CSP3) to know whether the two
/// injected scripts, one same-origin `src` and one inline, would run.
mod csp {
    /// What the page's policies say about the injected scripts.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// No policy stands in the way.
        Allowed,
        /// Every policy lets them run when they carry this nonce.
        Nonce(String),
        /// Some policy would refuse one of them: inject nothing.
        Refused,
    }

    /// The verdict of every `Content-Security-Policy` header value (each may
    /// hold several comma-separated policies; all are enforced).
    pub fn verdict<'a>(values: impl IntoIterator<Item = &'a str>) -> Verdict {
        let lists: Vec<Sources> = values
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter_map(script_sources)
            .collect();
        let nonce = lists.iter().find_map(|l| l.nonces.first().cloned());
        if !lists.iter().all(|l| l.allows(nonce.as_deref())) {
            return Verdict::Refused;
        }
        nonce.map_or(Verdict::Allowed, Verdict::Nonce)
    }

    /// The source list that governs `<script>` elements in one policy:
    /// `script-src-elem`, else `script-src`, else `default-src`; `None` when
    /// the policy has none of them.
    fn script_sources(policy: &str) -> Option<Sources> {
        let mut directives: Vec<(String, &str)> = Vec::new();
        for directive in policy.split(';') {
            let directive = directive.trim_matches(|c: char| c.is_ascii_whitespace());
            let (name, value) = directive
                .split_once(|c: char| c.is_ascii_whitespace())
                .unwrap_or((directive, ""));
            let name = name.to_ascii_lowercase();
            // The first of a repeated directive counts; the rest are ignored.
            if !name.is_empty() && !directives.iter().any(|(n, _)| *n == name) {
                directives.push((name, value));
            }
        }
        ["script-src-elem", "script-src", "default-src"]
            .iter()
            .find_map(|want| directives.iter().find(|(n, _)| n == want))
            .map(|(_, value)| Sources::parse(value))
    }

    /// The parts of a source list that matter here.
    #[derive(Debug, Default)]
    struct Sources {
        nonces: Vec<String>,
        /// Any `'sha…-'` hash: it disables `'unsafe-inline'`.
        hashes: bool,
        unsafe_inline: bool,
        /// Disables `'unsafe-inline'` and every allow-list source.
        strict_dynamic: bool,
        /// A source that surely matches the page's own origin. Host sources
        /// might too, but the page's host is not known here, so they do not
        /// count: better no client than a refused one reported to the site.
        same_origin: bool,
    }

    impl Sources {
        fn parse(list: &str) -> Sources {
            let mut s = Sources::default();
            for token in list.split_ascii_whitespace() {
                let lower = token.to_ascii_lowercase();
                match lower.as_str() {
                    "'unsafe-inline'" => s.unsafe_inline = true,
                    "'strict-dynamic'" => s.strict_dynamic = true,
                    // `https:` fails a page served over plain http, but a
                    // site that writes it is served over https.
                    "'self'" | "*" | "http:" | "https:" => s.same_origin = true,
                    _ if lower.starts_with("'nonce-") => {
                        if let Some(nonce) = nonce_value(token) {
                            s.nonces.push(nonce.to_owned());
                        }
                    }
                    _ if ["'sha256-", "'sha384-", "'sha512-"]
                        .iter()
                        .any(|p| lower.starts_with(p)) =>
                    {
                        s.hashes = true;
                    }
                    _ => {}
                }
            }
            s
        }

        /// Whether both injected scripts run, carrying `nonce` if any.
        fn allows(&self, nonce: Option<&str>) -> bool {
            if nonce.is_some_and(|n| self.nonces.iter().any(|m| m == n)) {
                return true;
            }
            let inline = self.unsafe_inline
                && self.nonces.is_empty()
                && !self.hashes
                && !self.strict_dynamic;
            let external = self.same_origin && !self.strict_dynamic;
            inline && external
        }
    }

    /// The value of a `'nonce-…'` token when it is well-formed base64 (or
    /// base64url), the only kind a browser matches; that also makes it safe
    /// to write into an attribute as is.
    fn nonce_value(token: &str) -> Option<&str> {
        let value = token.get("'nonce-".len()..)?.strip_suffix('\'')?;
        let body = value.trim_end_matches('=');
        let ok = !body.is_empty()
            && value.len() - body.len() <= 2
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b));
        ok.then_some(value)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn v(headers: &[&str]) -> Verdict {
            verdict(headers.iter().copied())
        }

        fn nonce(n: &str) -> Verdict {
            Verdict::Nonce(n.to_owned())
        }

        #[test]
        fn no_policy_or_no_script_directive_allows() {
            assert_eq!(v(&[]), Verdict::Allowed);
            assert_eq!(
                v(&["img-src 'self'; frame-ancestors 'none'"]),
                Verdict::Allowed
            );
            assert_eq!(v(&[""]), Verdict::Allowed);
        }

        #[test]
        fn a_nonce_is_copied() {
            assert_eq!(v(&["script-src 'nonce-abc123'"]), nonce("abc123"));
            assert_eq!(
                v(&["default-src 'self'; script-src 'strict-dynamic' 'NONCE-r4nd/+x==' https:"]),
                nonce("r4nd/+x==")
            );
            assert_eq!(v(&["default-src 'nonce-a_b-c'"]), nonce("a_b-c"));
        }

        #[test]
        fn script_src_elem_beats_script_src_beats_default_src() {
            assert_eq!(
                v(&["default-src 'nonce-d'; script-src 'nonce-s'; script-src-elem 'nonce-e'"]),
                nonce("e")
            );
            assert_eq!(
                v(&["default-src 'nonce-d'; script-src 'nonce-s'"]),
                nonce("s")
            );
            // A script-src without a nonce is not rescued by default-src's.
            assert_eq!(
                v(&["default-src 'nonce-d'; script-src 'self'"]),
                Verdict::Refused
            );
        }

        #[test]
        fn the_first_of_a_repeated_directive_counts() {
            assert_eq!(
                v(&["script-src 'nonce-first'; script-src 'nonce-second'"]),
                nonce("first")
            );
        }

        #[test]
        fn without_a_nonce_both_inline_and_self_are_needed() {
            assert_eq!(v(&["script-src 'self' 'unsafe-inline'"]), Verdict::Allowed);
            assert_eq!(v(&["default-src * 'unsafe-inline'"]), Verdict::Allowed);
            assert_eq!(v(&["script-src 'self'"]), Verdict::Refused);
            assert_eq!(v(&["script-src 'unsafe-inline'"]), Verdict::Refused);
            assert_eq!(v(&["script-src 'none'"]), Verdict::Refused);
            assert_eq!(
                v(&["script-src cdn.example 'unsafe-inline'"]),
                Verdict::Refused
            );
        }

        #[test]
        fn hashes_and_strict_dynamic_disable_unsafe_inline() {
            assert_eq!(
                v(&["script-src 'self' 'unsafe-inline' 'sha256-AAAA'"]),
                Verdict::Refused
            );
            assert_eq!(
                v(&["script-src 'self' 'unsafe-inline' 'strict-dynamic'"]),
                Verdict::Refused
            );
        }

        #[test]
        fn every_policy_must_agree() {
            // Two headers, or two policies in one: both are enforced.
            assert_eq!(
                v(&["script-src 'nonce-n'", "script-src 'self'"]),
                Verdict::Refused
            );
            assert_eq!(
                v(&["script-src 'nonce-n', script-src 'self' 'unsafe-inline'"]),
                nonce("n")
            );
            assert_eq!(
                v(&["script-src 'nonce-a'", "script-src 'nonce-b'"]),
                Verdict::Refused
            );
            assert_eq!(v(&["script-src 'nonce-a'", "img-src 'none'"]), nonce("a"));
        }

        #[test]
        fn malformed_nonces_are_ignored() {
            for bad in [
                "'nonce-'",
                "'nonce-a\"b'",
                "'nonce-ab===' ",
                "'nonce-<x>'",
                "'nonce-abc",
                "'nonce-a=b'",
            ] {
                assert_eq!(
                    v(&[&format!("script-src {bad}")]),
                    Verdict::Refused,
                    "{bad}"
                );
            }
            assert_eq!(nonce_value("'nonce-ab=='"), Some("ab=="));
        }

        #[test]
        fn odd_spacing_and_case_parse() {
            assert_eq!(
                v(&["  SCRIPT-SRC\t'Self'   'UNSAFE-INLINE' ;; "]),
                Verdict::Allowed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http::HeaderValue;
    use proptest::prelude::*;

    const TAGS: &str = "<script src=\"/_bridge/client.js\"></script>\
         <script>WsBridge.installWebSocketShim(undefined,{\"prefix\":\"/_bridge\"});</script>";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Runs `chunks` through the injector, synchronously.
    fn inject(chunks: Vec<&[u8]>) -> Vec<u8> {
        let input: Vec<Result<Bytes, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let rewriter = Injector::rewriter(&snippet("/_bridge", None)).unwrap();
        let injector = Injector::new(stream::iter(input).boxed(), rewriter);
        // Every input chunk is ready: the whole page comes out in one poll.
        let out: Vec<Bytes> = injector.try_collect().now_or_never().unwrap().unwrap();
        out.concat()
    }

    fn inject_whole(page: &str) -> String {
        String::from_utf8(inject(vec![page.as_bytes()])).unwrap()
    }

    #[test]
    fn the_snippet_is_escaped_and_carries_the_nonce() {
        assert_eq!(snippet("/_bridge", None), TAGS);
        assert_eq!(
            snippet("/b", Some("n0+/=")),
            "<script src=\"/b/client.js\" nonce=\"n0+/=\"></script>\
             <script nonce=\"n0+/=\">WsBridge.installWebSocketShim(undefined,{\"prefix\":\"/b\"});</script>"
        );
        let odd = snippet("/a\"<&>/</script>", None);
        assert!(odd.contains("src=\"/a&quot;&lt;&amp;&gt;/&lt;/script&gt;/client.js\""));
        assert_eq!(odd.matches("</script>").count(), 2, "{odd}");
    }

    #[test]
    fn tags_go_at_the_start_of_head() {
        assert_eq!(
            inject_whole(
                "<!doctype html><html lang=en><HEAD id=h><title>t</title></HEAD><body>x</body></html>"
            ),
            format!(
                "<!doctype html><html lang=en><HEAD id=h>{TAGS}<title>t</title></HEAD><body>x</body></html>"
            )
        );
    }

    #[test]
    fn without_head_tags_go_before_the_first_element() {
        assert_eq!(
            inject_whole("<html><body>x</body></html>"),
            format!("<html>{TAGS}<body>x</body></html>")
        );
        assert_eq!(
            inject_whole("<!doctype html><!-- c --><meta charset=utf-8><title>t</title><p>x"),
            format!("<!doctype html><!-- c -->{TAGS}<meta charset=utf-8><title>t</title><p>x")
        );
        assert_eq!(inject_whole("<p>x"), format!("{TAGS}<p>x"));
        // The slash means nothing in HTML: what follows is inside the head.
        assert_eq!(inject_whole("<head/><p>"), format!("<head/>{TAGS}<p>"));
    }

    #[test]
    fn pages_without_elements_are_untouched() {
        for page in [
            "",
            "just text",
            "<!doctype html>",
            "<!-- only -->",
            "<html>",
            "<html></html>",
        ] {
            assert_eq!(inject_whole(page), page);
        }
    }

    #[test]
    fn tags_are_injected_once_however_many_heads() {
        let out = inject_whole("<head></head><head></head><body><head>");
        assert_eq!(out, format!("<head>{TAGS}</head><head></head><body><head>"));
    }

    #[test]
    fn utf16_pages_are_untouched() {
        let page = b"\xFF\xFE<\x00h\x00e\x00a\x00d\x00>\x00";
        assert_eq!(inject(vec![b"", page]), page);
    }

    #[test]
    fn an_oversized_first_tag_leaves_the_page_whole_and_untouched() {
        let attr = "a".repeat(MAX_PARSER_MEMORY * 2);
        let page = format!("<html data-x=\"{attr}\"><head></head></html>");
        let chunks: Vec<&[u8]> = page.as_bytes().chunks(4096).collect();
        assert_eq!(inject(chunks), page.as_bytes());
    }

    #[test]
    fn a_big_tag_after_the_injection_is_copied_whole() {
        let attr = "b".repeat(MAX_PARSER_MEMORY * 2);
        let page = format!("<head><meta content=\"{attr}\"></head><body>end</body>");
        let chunks: Vec<&[u8]> = page.as_bytes().chunks(1000).collect();
        let expected = page.replacen("<head>", &format!("<head>{TAGS}"), 1);
        assert_eq!(inject(chunks), expected.as_bytes());
    }

    proptest! {
        /// However the page is cut into chunks, the output is the page with
        /// the tags right after `<head>`, and nothing else changed.
        #[test]
        fn chunking_never_changes_the_result(
            cuts in proptest::collection::vec(0usize..400, 0..12),
            junk in "[a-z <=\"'!/-]{0,60}", // no '>': it could close the comment
        ) {
            let page = format!("<!doctype html><!-- {junk} --><html><head><title>t</title></head><body>{junk}<p>x</p></body></html>");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (page.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([page.len()]) {
                chunks.push(&page.as_bytes()[last..c]);
                last = c;
            }
            let expected = page.replacen("<head>", &format!("<head>{TAGS}"), 1);
            prop_assert_eq!(String::from_utf8(inject(chunks)).unwrap(), expected);
        }

        /// Arbitrary bytes never panic, and come out whole.
        #[test]
        fn any_input_is_kept(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                "(<(html|head|body|script|p|!--|/head|!doctype html)[ a-z=\"'/]{0,6}>?|-->|[a-z <>&]{0,8}){0,40}"
                    .prop_map(String::into_bytes),
            ],
            cut in 0usize..600,
        ) {
            let cut = cut.min(bytes.len());
            let out = inject(vec![&bytes[..cut], &bytes[cut..]]);
            // The input survives in the output, around at most one snippet.
            let (n, t) = (bytes.len(), TAGS.len());
            prop_assert!(out.len() == n || out.len() == n + t, "{} from {}", out.len(), n);
            if out.len() == n + t {
                let at = out.windows(t).position(|w| w == TAGS.as_bytes()).unwrap();
                prop_assert_eq!([&out[..at], &out[at + t..]].concat(), bytes);
            } else {
                prop_assert_eq!(out, bytes);
            }
        }
    }

    #[test]
    fn plans_only_html_2xx() {
        let html = headers(&[("content-type", "text/html; charset=UTF-8")]);
        let identity = Some(Plan {
            coding: Coding::Identity,
            nonce: None,
        });
        assert_eq!(plan(StatusCode::OK, &html), identity);
        assert_eq!(plan(StatusCode::CREATED, &html), identity);
        for status in [204, 205, 206, 301, 304, 404, 500] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(plan(status, &html), None, "{status}");
        }
        for ct in [
            "text/plain",
            "application/json",
            "application/xhtml+xml",
            "text/htmlx",
        ] {
            assert_eq!(
                plan(StatusCode::OK, &headers(&[("content-type", ct)])),
                None
            );
        }
        assert_eq!(plan(StatusCode::OK, &HeaderMap::new()), None);
        assert!(plan(StatusCode::OK, &headers(&[("content-type", "TEXT/HTML")])).is_some());
    }

    #[test]
    fn plans_skip_what_must_not_change() {
        let skip = |extra: (&str, &str)| {
            plan(
                StatusCode::OK,
                &headers(&[("content-type", "text/html"), extra]),
            )
        };
        assert_eq!(
            skip(("content-disposition", "attachment; filename=a.html")),
            None
        );
        assert!(skip(("content-disposition", "inline")).is_some());
        assert_eq!(skip(("cache-control", "public, no-transform")), None);
        assert!(skip(("cache-control", "no-cache, max-age=0")).is_some());
        assert_eq!(skip(("content-range", "bytes 0-9/100")), None);
        assert_eq!(skip(("content-encoding", "zstd")), None);
        assert_eq!(skip(("content-encoding", "gzip, br")), None);
        assert_eq!(skip(("content-security-policy", "script-src 'self'")), None);
        assert_eq!(
            plan(
                StatusCode::OK,
                &headers(&[("content-type", "text/html; charset=\"UTF-16LE\"")])
            ),
            None
        );
    }

    #[test]
    fn plans_decode_known_codings_and_copy_nonces() {
        let with = |coding: &str| {
            plan(
                StatusCode::OK,
                &headers(&[("content-type", "text/html"), ("content-encoding", coding)]),
            )
            .map(|p| p.coding)
        };
        assert_eq!(with("gzip"), Some(Coding::Gzip));
        assert_eq!(with("X-Gzip"), Some(Coding::Gzip));
        assert_eq!(with("deflate"), Some(Coding::Deflate));
        assert_eq!(with("br"), Some(Coding::Brotli));
        assert_eq!(with("identity"), Some(Coding::Identity));
        assert_eq!(with("identity, br"), Some(Coding::Brotli));
        assert_eq!(with("compress"), None);
        let p = plan(
            StatusCode::OK,
            &headers(&[
                ("content-type", "text/html"),
                (
                    "content-security-policy",
                    "script-src 'nonce-xyz' 'strict-dynamic'",
                ),
            ]),
        );
        assert_eq!(p.and_then(|p| p.nonce).as_deref(), Some("xyz"));
    }
}
