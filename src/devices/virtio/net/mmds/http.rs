//! The MMDS HTTP service: one request in, one response out, as Firecracker answers them.
//!
//! Requests are parsed with `httparse` from a fixed buffer (at most [`MAX_HEADERS`] headers);
//! only the head is read, a body is ignored and the connection closes after the answer.
//! `GET` returns the value at the path (a JSON pointer into the data): JSON when the request
//! says `Accept: application/json`, otherwise the IMDS text form (an object's keys one a line,
//! objects with a trailing `/`; a string as itself; other types 501), and always the IMDS form
//! when `imds_compat` is set. `PUT /latest/api/token` issues a session token
//! ([`super::token`]); a `PUT` carrying `X-Forwarded-For` is refused. Under V2 a `GET` needs a
//! valid token in `X-metadata-token` or `X-aws-ec2-metadata-token`; under V1 a token is
//! checked only for the counters. Status codes and bodies are Firecracker's. Each answer comes
//! with its audit entry ([`super::audit`]).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::audit::{escape, AuditEntry, METHOD_MAX, PATH_MAX};
use super::token::{TokenAuthority, PATH_TO_TOKEN};

/// Headers a request may carry; more is a 400.
pub const MAX_HEADERS: usize = 32;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];

const MSG_INVALID_TOKEN: &str = "MMDS token not valid.";
const MSG_INVALID_URI: &str = "Invalid URI.";
const MSG_METHOD: &str = "Not allowed HTTP method.";
const MSG_NO_TOKEN: &str = "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.";
const MSG_NO_TTL: &str = "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.";
const MSG_UNSUPPORTED_TYPE: &str = "Cannot retrieve value. The value has an unsupported type.";

/// The MMDS protocol version of an interface's service (the API's type).
pub use crate::mmds::MmdsVersion;

/// What the service answers from.
#[derive(Debug)]
pub struct ServiceContext<'a> {
    /// Protocol version.
    pub version: MmdsVersion,
    /// Always answer in the IMDS text form.
    pub imds_compat: bool,
    /// The metadata.
    pub data: &'a Value,
    /// The interface's token authority.
    pub tokens: &'a TokenAuthority,
    /// The current time.
    pub now: Instant,
}

/// What a request buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Incomplete,
    /// A complete answer.
    Answer(Answer),
}

/// The response to a request and what the audit log says about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response bytes.
    pub bytes: Vec<u8>,
    /// Method, path, status (of `bytes`), token age.
    pub audit: AuditEntry,
}

/// Response bytes and their status.
type Reply = (Vec<u8>, u16);

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        501 => "Not Implemented",
        _ => "",
    }
}

/// A response with `body`, and extra header lines (each ending in CRLF).
fn response(minor: u8, status: u16, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.{minor} {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

fn text(minor: u8, status: u16, body: &str) -> Reply {
    (response(minor, status, "text/plain", "", body), status)
}

/// The first header among `names` (case-insensitive), with its name as the client spelt it.
fn header<'h>(headers: &[httparse::Header<'h>], names: &[&str]) -> Option<(&'h str, &'h [u8])> {
    headers
        .iter()
        .find(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        .map(|h| (h.name, h.value))
}

/// The absolute path of a request target (origin form, or absolute form `http://host/path`);
/// empty when there is none.
fn abs_path(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("", |at| &rest[at..]),
        None => "",
    }
}

/// Collapses repeated slashes, so that the path is a JSON pointer.
fn sanitize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The IMDS text form of a value, `None` for a type it cannot show.
fn imds_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Answers the request at the start of `buf`, or says that its head is incomplete.
/// A malformed head is answered with 400.
pub fn serve(buf: &[u8], ctx: &ServiceContext<'_>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Ok(httparse::Status::Complete(_)) => {}
        Err(e) => {
            let (bytes, status) = text(1, 400, &format!("Invalid request: {e}."));
            return Parsed::Answer(Answer {
                bytes,
                audit: AuditEntry::unparsed(status),
            });
        }
    }
    let minor = req.version.unwrap_or(1).min(1);
    let (Some(method), Some(target)) = (req.method, req.path) else {
        let (bytes, status) = text(minor, 400, MSG_INVALID_URI);
        return Parsed::Answer(Answer {
            bytes,
            audit: AuditEntry::unparsed(status),
        });
    };
    let uri = abs_path(target);
    let mut token_age = None;
    let (bytes, status) = if uri.is_empty() {
        text(minor, 400, MSG_INVALID_URI)
    } else {
        match method {
            "GET" => get(minor, uri, req.headers, ctx, &mut token_age),
            "PUT" => put(minor, uri, req.headers, ctx),
            _ => (
                response(minor, 405, "text/plain", "Allow: GET, PUT\r\n", MSG_METHOD),
                405,
            ),
        }
    };
    Parsed::Answer(Answer {
        bytes,
        audit: AuditEntry {
            method: escape(method.as_bytes(), METHOD_MAX),
            path: escape(target.as_bytes(), PATH_MAX),
            status,
            token_age,
        },
    })
}

/// Answers a GET; `token_age` learns the age of a valid token the request carried.
fn get(
    minor: u8,
    uri: &str,
    headers: &[httparse::Header<'_>],
    ctx: &ServiceContext<'_>,
    token_age: &mut Option<Duration>,
) -> Reply {
    let token = header(headers, &TOKEN_HEADERS).map(|(_, v)| v);
    *token_age = token
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| ctx.tokens.check(t, ctx.now))
        .map(|times| times.age);
    if ctx.version == MmdsVersion::V2 {
        if token.is_none() {
            return text(minor, 401, MSG_NO_TOKEN);
        }
        if token_age.is_none() {
            return text(minor, 401, MSG_INVALID_TOKEN);
        }
    }
    let json = header(headers, &["accept"])
        .is_some_and(|(_, v)| v.trim_ascii().eq_ignore_ascii_case(b"application/json"))
        && !ctx.imds_compat;
    let path = sanitize(uri);
    let pointer = path.strip_suffix('/').unwrap_or(&path);
    let Some(value) = ctx.data.pointer(pointer) else {
        return text(minor, 404, &format!("Resource not found: {uri}."));
    };
    if json {
        let body = value.to_string();
        return (response(minor, 200, "application/json", "", &body), 200);
    }
    match imds_text(value) {
        Some(body) => text(minor, 200, &body),
        None => text(minor, 501, MSG_UNSUPPORTED_TYPE),
    }
}

fn put(minor: u8, uri: &str, headers: &[httparse::Header<'_>], ctx: &ServiceContext<'_>) -> Reply {
    if let Some((name, _)) = header(headers, &[X_FORWARDED_FOR]) {
        return text(
            minor,
            400,
            &format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
        );
    }
    if sanitize(uri) != PATH_TO_TOKEN {
        return text(minor, 404, &format!("Resource not found: {uri}."));
    }
    let Some((name, value)) = header(headers, &TTL_HEADERS) else {
        return text(minor, 400, MSG_NO_TTL);
    };
    let value = String::from_utf8_lossy(value);
    let Ok(ttl) = value.trim().parse::<u32>() else {
        return text(
            minor,
            400,
            &format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
        );
    };
    match ctx.tokens.issue(ttl, ctx.now) {
        Ok(token) => (
            response(
                minor,
                200,
                "text/plain",
                &format!("{name}: {ttl}\r\n"),
                &token,
            ),
            200,
        ),
        Err(e) => text(minor, 400, &e.to_string()),
    }
}
