//! A blocking HTTP/1.1 client over one kept-alive TCP connection: the suite knows exactly when
//! a request was written and how long its answer took, with no client library in between.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server closes the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Connecting or writing failed: the server has not seen the request.
    NotSent(std::io::Error),
    /// Written, then no complete answer.
    NoAnswer(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "not sent ({e})"),
            Failure::NoAnswer(e) => write!(f, "no answer ({e})"),
        }
    }
}

/// A client of one server: one kept-alive connection, opened again when closed.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// `timeout` bounds the connect and each read: a request that hangs longer fails.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            conn: None,
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Response, Failure> {
        self.request("GET", path, &[], None)
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Response, Failure> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                    .map_err(Failure::NotSent)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .map_err(Failure::NotSent)?;
                stream.set_nodelay(true).map_err(Failure::NotSent)?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: chaos\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or(""));
        let stream = conn.get_mut();
        if let Err(e) = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.flush())
        {
            self.conn = None;
            return Err(Failure::NotSent(e));
        }
        match read_response(conn, method == "HEAD") {
            Ok(r) => {
                if r.close {
                    self.conn = None;
                }
                Ok(r)
            }
            Err(e) => {
                self.conn = None;
                Err(Failure::NoAnswer(e))
            }
        }
    }
}

/// Reads one whole response (Content-Length or chunked).
pub fn read_response(
    reader: &mut BufReader<TcpStream>,
    head_only: bool,
) -> std::io::Result<Response> {
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(eof());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut headers = Vec::new();
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.to_ascii_lowercase().contains("close"),
            _ => {}
        }
        headers.push((name, value));
    }
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
    } else if chunked {
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(eof());
            }
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad())?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body = vec![0; length];
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
        close = true;
    }
    Ok(Response {
        status,
        headers,
        body,
        close,
    })
}
