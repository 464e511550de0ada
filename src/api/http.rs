//! A strict HTTP/1.1 request parser for the API: one request from the start of a connection's
//! buffer, or "need more bytes", or the 4xx/5xx that ends the connection.
//!
//! Strict means that two parsers can never disagree on where a request ends: lines end in
//! CRLF only (a bare CR or LF is refused), no obs-fold, exactly one `Content-Length` made of
//! digits only (no sign, no leading zeros), no `Transfer-Encoding` at all (Firecracker's
//! micro-http does not decode chunked bodies either; its parse errors are 400s), bounded
//! request line, header count and head size. The result depends on the bytes only.
//!
//! httparse tokenises the request line and the headers; this module adds what it does not
//! check (line ends, limits, framing headers) and answers faults in the order of the bytes,
//! as soon as the line holding one is complete.

/// Largest request head (request line, headers and the blank line) accepted.
pub const MAX_HEAD_SIZE: usize = 8192;
/// Largest request line (without its CRLF) accepted.
pub const MAX_REQUEST_LINE: usize = 2048;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 32;
const MAX_METHOD: usize = 16;
/// A `Content-Length` of more digits than this is refused (it fits a u64).
const MAX_LENGTH_DIGITS: usize = 19;

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, PATCH, ...
    pub method: String,
    /// The path without query string.
    pub path: String,
    /// The body, if a non-empty one was sent.
    pub body: Option<Vec<u8>>,
    /// The client asked to close after this request (or spoke HTTP/1.0 without keep-alive).
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
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Bad request line or headers.
    #[error("Malformed HTTP request: {0}.")]
    Malformed(&'static str),
    /// The request line is longer than [`MAX_REQUEST_LINE`].
    #[error("The request line is longer than {MAX_REQUEST_LINE} bytes.")]
    RequestLineTooLong,
    /// The head is longer than [`MAX_HEAD_SIZE`].
    #[error("The request head is larger than {MAX_HEAD_SIZE} bytes.")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("The request has more than {MAX_HEADERS} headers.")]
    TooManyHeaders,
    /// The body is larger than the configured limit (Firecracker's message).
    #[error(
        "Request payload with size {size} is larger than the limit of {limit} allowed by server."
    )]
    PayloadTooLarge {
        /// Content-Length given.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Chunked or other transfer encodings.
    #[error("Transfer-Encoding is not supported; send a Content-Length.")]
    TransferEncoding,
    /// HTTP/x.y other than 1.0 and 1.1.
    #[error("Unsupported HTTP version; use HTTP/1.1.")]
    Version,
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) | Self::TransferEncoding => 400,
            // Firecracker answers it 400; clients may rely on that.
            Self::PayloadTooLarge { .. } => 400,
            Self::RequestLineTooLong => 414,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Version => 505,
        }
    }
}

/// Scans the head line by line for what httparse does not check: line ends (it also takes a
/// bare LF) and the size limits. Returns the length of the clean complete lines, then whether
/// they are the whole head, or the fault that follows them.
fn scan_head(buf: &[u8]) -> (usize, Result<bool, HttpError>) {
    let mut pos = 0;
    for line in 0..=MAX_HEADERS + 1 {
        let rest = &buf[pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let fault = match (rest.get(len), rest.get(len + 1)) {
            (Some(b'\n'), _) => Some(HttpError::Malformed("bare LF in the request head")),
            (Some(_), Some(b'\n')) => None,
            (Some(_), Some(_)) => Some(HttpError::Malformed("bare CR in the request head")),
            _ if line == 0 && len > MAX_REQUEST_LINE => Some(HttpError::RequestLineTooLong),
            _ if pos + len >= MAX_HEAD_SIZE => Some(HttpError::HeadTooLarge),
            _ => return (pos, Ok(false)),
        };
        let next = pos + len + 2;
        let fault = fault.or(match line {
            0 if len > MAX_REQUEST_LINE => Some(HttpError::RequestLineTooLong),
            // httparse would skip empty lines before the request line.
            0 if len == 0 => Some(HttpError::Malformed("empty request line")),
            _ if next > MAX_HEAD_SIZE => Some(HttpError::HeadTooLarge),
            _ if line > MAX_HEADERS && len > 0 => Some(HttpError::TooManyHeaders),
            _ => None,
        });
        if let Some(fault) = fault {
            return (pos, Err(fault));
        }
        if line > 0 && len == 0 {
            return (next, Ok(true));
        }
        pos = next;
    }
    (pos, Err(HttpError::TooManyHeaders))
}

/// What the head says.
#[derive(Default)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    content_length: Option<u64>,
    close: bool,
    expect_continue: bool,
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    // Digits only, no leading zero: at most 19 of them always fit a u64.
    let plain = matches!(value, [b'1'..=b'9', ..] | [b'0'])
        && value.len() <= MAX_LENGTH_DIGITS
        && value.iter().all(u8::is_ascii_digit);
    let value = std::str::from_utf8(value).ok().filter(|_| plain);
    value
        .and_then(|v| v.parse().ok())
        .ok_or(HttpError::Malformed("invalid Content-Length"))
}

/// Tokenises a complete head (lines checked by [`scan_head`]) with httparse, then reads it.
fn read_head(head: &[u8]) -> Result<Head<'_>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .allow_space_before_first_header_name(false)
        .ignore_invalid_headers_in_requests(false)
        .parse_request(&mut request, head);
    let complete = parsed.map_err(|e| match e {
        // httparse takes HTTP/1.0 and HTTP/1.1 only; another well-formed version is a 505.
        httparse::Error::Version => match head.split(|&b| b == b' ').nth(2) {
            Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor, b'\r', b'\n', ..])
                if major.is_ascii_digit() && minor.is_ascii_digit() =>
            {
                HttpError::Version
            }
            _ => HttpError::Malformed("invalid HTTP version"),
        },
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        _ => HttpError::Malformed("invalid request line"),
    })?;
    if complete.is_partial() {
        return Err(HttpError::Malformed("incomplete head"));
    }
    let method = request.method.unwrap_or_default();
    if method.len() > MAX_METHOD {
        return Err(HttpError::Malformed("invalid method"));
    }
    let target = request.path.unwrap_or_default();
    if !target.is_ascii() {
        return Err(HttpError::Malformed("invalid request target"));
    }
    // Absolute-form targets ("http://localhost/actions") as some clients send them.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None if target.starts_with('/') => target,
        None => return Err(HttpError::Malformed("the request target is not a path")),
    };
    let mut head = Head {
        method,
        path: path.split('?').next().unwrap_or("/"),
        ..Head::default()
    };
    let mut keep_alive = false;
    for header in request.headers.iter() {
        let (name, value) = (header.name, header.value.trim_ascii());
        if name.eq_ignore_ascii_case("content-length") {
            if head.content_length.is_some() {
                return Err(HttpError::Malformed("more than one Content-Length"));
            }
            head.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                head.close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    head.close |= request.version == Some(0) && !keep_alive;
    Ok(head)
}

/// Parses one request from the start of `buf`. `continue_sent` says whether a 100 Continue
/// was already sent for this request.
pub fn parse(buf: &[u8], max_payload: usize, continue_sent: bool) -> Result<Parsed, HttpError> {
    let (lines_end, scanned) = scan_head(buf);
    if scanned != Ok(true) {
        // The complete lines so far are checked now, as if the head ended after them, so that
        // faults are answered in the order of the bytes and without waiting for the rest.
        if lines_end > 0 {
            let mut lines = buf[..lines_end].to_vec();
            lines.extend_from_slice(b"\r\n");
            read_head(&lines)?;
        }
        return scanned.map(|_| Parsed::Partial);
    }
    let head_len = lines_end;
    let head = read_head(&buf[..head_len])?;
    let content_length = head.content_length.unwrap_or(0);
    if content_length > max_payload as u64 {
        return Err(HttpError::PayloadTooLarge {
            size: content_length,
            limit: max_payload,
        });
    }
    // Bounded by max_payload just above.
    let total = head_len + content_length as usize;
    if buf.len() < total {
        let waits = head.expect_continue && !continue_sent && buf.len() == head_len;
        return Ok(if waits {
            Parsed::ExpectContinue
        } else {
            Parsed::Partial
        });
    }
    Ok(Parsed::Complete(
        Request {
            method: head.method.to_string(),
            path: head.path.to_string(),
            body: (content_length > 0).then(|| buf[head_len..total].to_vec()),
            close: head.close,
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8], limit: usize) -> (Request, usize) {
        match parse(raw, limit, false) {
            Ok(Parsed::Complete(r, used)) => (r, used),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn error(raw: &[u8]) -> HttpError {
        match parse(raw, 100, false) {
            Err(e) => e,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn complete_request_with_body() {
        let raw = b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET";
        let (r, used) = complete(raw, 100);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/actions"));
        assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(used, raw.len() - 3);
        assert!(!r.close);
    }

    #[test]
    fn every_prefix_of_a_request_is_partial() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde";
        for n in 0..raw.len() {
            assert_eq!(parse(&raw[..n], 100, false), Ok(Parsed::Partial), "{n}");
        }
        assert!(complete(raw, 100).0.close);
    }

    #[test]
    fn content_length_must_be_one_plain_decimal() {
        for bad in [
            &b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"PUT /x HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 3\r\n\r\n{}",
            b"PUT /x HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 0005\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
        let (r, _) = complete(b"PUT /x HTTP/1.1\r\nContent-Length:  0 \r\n\r\n", 100);
        assert_eq!(r.body, None);
        let (r, _) = complete(b"PUT /x HTTP/1.1\r\nContent-Length:\t3\r\n\r\nabc", 100);
        assert_eq!(r.body.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 50000\r\n\r\n";
        let e = parse(raw, 51, false).unwrap_err();
        assert_eq!(
            e,
            HttpError::PayloadTooLarge {
                size: 50000,
                limit: 51
            }
        );
        assert_eq!(e.status(), 400);
        let huge = b"PUT /x HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(parse(huge, 51, false).unwrap_err().status(), 400);
    }

    #[test]
    fn transfer_encoding_is_refused_whatever_its_value() {
        for te in ["chunked", "identity", "gzip, chunked", ""] {
            let raw = format!("PUT /x HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(error(raw.as_bytes()), HttpError::TransferEncoding);
        }
        let both = b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(error(both).status(), 400);
    }

    #[test]
    fn bare_cr_bare_lf_and_obs_fold_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
        // A bare CR is refused even before the head is complete.
        assert!(parse(b"GET / HTTP/1.1\r\nX: a\rb", 10, false).is_err());
    }

    #[test]
    fn request_line_must_have_three_clean_parts() {
        for bad in [
            &b"GET  / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET /\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/11\r\n\r\n",
            b"\x01\x02 nonsense\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
        for version in ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2"] {
            let raw = format!("GET / {version}\r\n\r\n");
            assert_eq!(error(raw.as_bytes()).status(), 505, "{version}");
        }
    }

    #[test]
    fn limits_answer_414_and_431() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(error(long_target.as_bytes()).status(), 414);
        // Known before the line ends.
        let partial = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(error(partial.as_bytes()).status(), 414);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(error(raw.as_bytes()), HttpError::TooManyHeaders);
        let fits: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        complete(format!("GET / HTTP/1.1\r\n{fits}\r\n").as_bytes(), 0);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(MAX_HEAD_SIZE));
        assert_eq!(error(big.as_bytes()), HttpError::HeadTooLarge);
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(MAX_HEAD_SIZE));
        assert_eq!(error(unfinished.as_bytes()), HttpError::HeadTooLarge);
    }

    #[test]
    fn a_full_buffer_never_stays_partial() {
        // The server reads at most MAX_HEAD_SIZE + max_payload + 1 bytes: whatever they are,
        // a request or an error comes out, so no byte ever has to be dropped.
        let max_payload = 10;
        for filler in [b'a', b'\r', b' '] {
            let mut buf = b"PUT /x HTTP/1.1\r\n".to_vec();
            buf.resize(MAX_HEAD_SIZE + max_payload + 1, filler);
            assert_ne!(parse(&buf, max_payload, false), Ok(Parsed::Partial));
        }
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        while buf.len() < MAX_HEAD_SIZE + 1 {
            buf.extend_from_slice(b"X: y\r\n");
        }
        assert_ne!(parse(&buf, 0, false), Ok(Parsed::Partial));
    }

    #[test]
    fn expect_continue_is_signalled_once() {
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse(raw, 100, false).unwrap(), Parsed::ExpectContinue);
        assert_eq!(parse(raw, 100, true).unwrap(), Parsed::Partial);
    }

    #[test]
    fn connection_tokens_and_http10_decide_closing() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n", 0);
        assert!(r.close);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0);
        assert!(!r.close);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n", 0);
        assert!(r.close);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 0);
        assert!(!r.close);
    }

    #[test]
    fn absolute_form_and_query_are_reduced_to_the_path() {
        let raw = b"GET http://localhost/machine-config?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let (r, _) = complete(raw, 10);
        assert_eq!(r.path, "/machine-config");
        assert!(r.close);
        let (r, _) = complete(b"GET http://localhost HTTP/1.1\r\n\r\n", 10);
        assert_eq!(r.path, "/");
    }

    #[test]
    fn a_bad_line_is_answered_before_the_head_ends() {
        assert_eq!(
            parse(
                b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
                10,
                false
            ),
            Err(HttpError::TransferEncoding)
        );
        assert_eq!(error(b"GET / HTTP/2.0\r\nHost: x\r\n").status(), 505);
        assert!(matches!(
            error(b"GET x HTTP/1.1\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            error(b"GET / HTTP/1.1\r\nHo st: x\r\nY"),
            HttpError::Malformed(_)
        ));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nHo st", 10, false),
            Ok(Parsed::Partial)
        );
    }

    #[test]
    fn the_first_fault_in_byte_order_is_answered() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{many}\r\n");
        assert_eq!(error(raw.as_bytes()), HttpError::TransferEncoding);
        let raw = format!(
            "GET / HTTP/1.1\r\nContent-Length: x\r\nX: {}",
            "v".repeat(MAX_HEAD_SIZE)
        );
        assert!(matches!(error(raw.as_bytes()), HttpError::Malformed(_)));
        assert_eq!(
            error(b"GET / HTTP/1.2\r\nX: a\nb\r\n\r\n"),
            HttpError::Version
        );
        let raw = format!("GET / HTTP/1.1\r\n{many}X: a\rb\r\n\r\n");
        assert_eq!(error(raw.as_bytes()), HttpError::TooManyHeaders);
    }

    #[test]
    fn header_values_are_ascii_or_obs_text_with_space_and_tab_only() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\xff\r\n\r\n", 0);
        assert_eq!(r.path, "/");
        for bad in [
            &b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX: \x0cb\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 2\x0c\r\n\r\n{}",
            b"GET / HTTP/1.1\r\nX: a\x1bb\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
    }

    #[test]
    fn a_non_ascii_request_target_is_refused() {
        for bad in [
            &b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"[..],
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(error(bad), HttpError::Malformed(_)), "{bad:?}");
        }
        assert!(matches!(
            error(b"GET /\x00 HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn methods_are_short_tokens() {
        let (r, _) = complete(b"M-SEARCH! / HTTP/1.1\r\n\r\n", 0);
        assert_eq!(r.method, "M-SEARCH!");
        let long = format!("{} / HTTP/1.1\r\n\r\n", "A".repeat(MAX_METHOD + 1));
        assert!(matches!(error(long.as_bytes()), HttpError::Malformed(_)));
    }
}
