//! HTTP/1.1 answers of the API, serialised with Firecracker's `{"fault_message": ...}` error
//! shape.

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
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_responses_have_firecrackers_shape() {
        let bytes = Response::fault(400, "bad").to_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.ends_with("{\"fault_message\":\"bad\"}"));
    }

    #[test]
    fn new_limit_statuses_have_their_reason_phrases() {
        for (status, phrase) in [
            (408, "Request Timeout"),
            (413, "Payload Too Large"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
            (505, "HTTP Version Not Supported"),
        ] {
            let text = String::from_utf8(Response::fault(status, "x").to_bytes(true)).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} {phrase}\r\n")),
                "{text}"
            );
        }
    }
}
