//! HTTP/1.1 framing for the API: requests parsed with `httparse` from a connection's buffer,
//! responses serialised with Firecracker's `{"fault_message": ...}` error shape.

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_SIZE: usize = 8192;
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, PATCH, ...
    pub method: String,
    /// The path without query string.
    pub path: String,
    /// The body, if a non-empty one was sent.
    pub body: Option<Vec<u8>>,
    /// The client asked to close after this request.
    pub close: bool,
}

/// What the buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The client sent `Expect: 100-continue` and waits before sending its body.
    ExpectContinue,
    /// A request and the number of bytes it used.
    Complete(Request, usize),
}

/// Why a request cannot be served; the connection is closed after the answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Bad request line or headers.
    #[error("Malformed HTTP request: {0}.")]
    Malformed(String),
    /// The head is longer than [`MAX_HEAD_SIZE`].
    #[error("The request head is larger than {MAX_HEAD_SIZE} bytes.")]
    HeadTooLarge,
    /// The body is larger than the configured limit (Firecracker's message).
    #[error(
        "Request payload with size {size} is larger than the limit of {limit} allowed by server."
    )]
    PayloadTooLarge {
        /// Content-Length given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Chunked or other transfer encodings.
    #[error("Transfer-Encoding is not supported; send a Content-Length.")]
    TransferEncoding,
    /// Not HTTP/1.x.
    #[error("Unsupported HTTP version.")]
    Version,
}

/// Parses one request from the start of `buf`. `continue_sent` says whether a 100 Continue
/// was already sent for this request.
pub fn parse(buf: &[u8], max_payload: usize, continue_sent: bool) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_SIZE {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD_SIZE {
        return Err(HttpError::HeadTooLarge);
    }
    if req.version != Some(1) && req.version != Some(0) {
        return Err(HttpError::Version);
    }
    let mut content_length = 0usize;
    let mut close = req.version == Some(0);
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("invalid Content-Length '{value}'")))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if content_length > max_payload {
        return Err(HttpError::PayloadTooLarge {
            size: content_length,
            limit: max_payload,
        });
    }
    let total = head_len + content_length;
    if buf.len() < total {
        return Ok(
            if expect_continue && !continue_sent && buf.len() == head_len {
                Parsed::ExpectContinue
            } else {
                Parsed::Partial
            },
        );
    }
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    // Absolute-form targets ("http://localhost/actions") as some clients send them.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    let body = (content_length > 0).then(|| buf[head_len..total].to_vec());
    Ok(Parsed::Complete(
        Request {
            method: req.method.unwrap_or("").to_string(),
            path: path.to_string(),
            body,
            close,
        },
        total,
    ))
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// An error with Firecracker's fault message body.
    pub fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message }).to_string()),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: Palisade API\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            if close { "close" } else { "keep-alive" }
        );
        match &self.body {
            Some(body) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                out.push_str(body);
            }
            None if self.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_request_with_body() {
        let raw = b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET";
        match parse(raw, 100, false).unwrap() {
            Parsed::Complete(r, used) => {
                assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/actions"));
                assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
                assert_eq!(used, raw.len() - 3);
                assert!(!r.close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_head_and_partial_body_wait_for_more() {
        assert_eq!(parse(b"GET / HT", 100, false).unwrap(), Parsed::Partial);
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(parse(raw, 100, false).unwrap(), Parsed::Partial);
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 50000\r\n\r\n";
        assert_eq!(
            parse(raw, 51, false).unwrap_err(),
            HttpError::PayloadTooLarge {
                size: 50000,
                limit: 51
            }
        );
    }

    #[test]
    fn garbage_and_huge_heads_are_errors() {
        assert!(matches!(
            parse(b"\x01\x02 nonsense\r\n\r\n", 10, false),
            Err(HttpError::Malformed(_))
        ));
        let long = vec![b'a'; MAX_HEAD_SIZE + 10];
        assert_eq!(
            parse(&long, 10, false).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let chunked = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(chunked, 10, false).unwrap_err(),
            HttpError::TransferEncoding
        );
        let bad_len = b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(
            parse(bad_len, 10, false),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn expect_continue_is_signalled_once() {
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse(raw, 100, false).unwrap(), Parsed::ExpectContinue);
        assert_eq!(parse(raw, 100, true).unwrap(), Parsed::Partial);
    }

    #[test]
    fn absolute_form_and_query_are_reduced_to_the_path() {
        let raw = b"GET http://localhost/machine-config?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        match parse(raw, 10, false).unwrap() {
            Parsed::Complete(r, _) => {
                assert_eq!(r.path, "/machine-config");
                assert!(r.close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fault_responses_have_firecrackers_shape() {
        let bytes = Response::fault(400, "bad").to_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.ends_with("{\"fault_message\":\"bad\"}"));
    }
}
