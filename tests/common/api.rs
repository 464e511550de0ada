//! A small HTTP/1.1 client over a Unix socket, enough to drive the API from tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One answer.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    /// The `fault_message` of an error answer.
    pub fn fault(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body));
        v["fault_message"].as_str().unwrap_or_default().to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A keep-alive connection to the API socket.
pub struct ApiClient {
    reader: BufReader<UnixStream>,
}

/// Waits until `path` accepts connections.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "API socket {path:?} never came up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl ApiClient {
    /// Connects to the socket.
    pub fn connect(path: impl Into<PathBuf>) -> Self {
        let stream = UnixStream::connect(path.into()).expect("connect to the API socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// Sets how long one read may wait for the server.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }

    /// Reads until the server closes the connection (what was left after the last answer).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.reader.read(&mut chunk) {
                Ok(0) => return rest,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                // A server that closes with our unread bytes in its queue resets the stream.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return rest,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read until close: {e}"),
            }
        }
    }

    /// Shuts the sending side down: the server reads end-of-file after what was sent.
    pub fn shutdown_write(&mut self) {
        self.reader
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write request");
    }

    /// Sends a request and reads its answer.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> ApiResponse {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(body) = body {
            req.push_str(body);
        }
        self.send_raw(req.as_bytes());
        self.read_response()
    }

    /// Reads one answer.
    pub fn read_response(&mut self) -> ApiResponse {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!("bad status line {status_line:?} (empty: the server closed the connection)")
            });
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        ApiResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// PUT with a JSON body.
    pub fn put(&mut self, path: &str, body: serde_json::Value) -> ApiResponse {
        self.request("PUT", path, Some(&body.to_string()))
    }

    /// PATCH with a JSON body.
    pub fn patch(&mut self, path: &str, body: serde_json::Value) -> ApiResponse {
        self.request("PATCH", path, Some(&body.to_string()))
    }

    /// GET.
    pub fn get(&mut self, path: &str) -> ApiResponse {
        self.request("GET", path, None)
    }
}
