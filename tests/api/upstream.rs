//! Small raw-TCP upstreams for gateway tests: full control over what goes on the wire.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

/// What the fake upstream does with each request.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// `/users/headers…`: answers the request it saw as JSON, with hop-by-hop response headers;
    /// `/users/mirror`: answers the request body as is.
    Echo,
    /// Reads the request, then never answers: holds the connection until the peer closes it.
    Silent,
    /// Sends a head announcing 100 bytes, 10 of them, then stalls until the peer closes.
    StallBody,
    /// Sends a head announcing 20 bytes, 10 of them, the other 10 after 400 ms.
    SlowBody,
    /// Counts request body bytes as they arrive (in `received`), never answers.
    CountBody,
    /// Answers every request on a connection with 200 and keeps the connection open.
    KeepAlive,
    /// Answers a connection's first request like `KeepAlive` (so it gets pooled), then reads the
    /// second and closes the connection without answering.
    DropSecond,
    /// Answers `408 Request Timeout` and closes, as actix-http does when its own timer fires
    /// (e.g. after the process was frozen), on the first connection, or on every one.
    RequestTimeout { every_connection: bool },
}

/// How long `SlowBody` waits between the two halves of its body.
pub const SLOW_BODY_PAUSE: Duration = Duration::from_millis(400);

pub struct FakeUpstream {
    pub port: u16,
    /// Connections open right now.
    pub active: Arc<AtomicUsize>,
    /// Request body bytes received so far (`CountBody`).
    pub received: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().map(|a| a.port()).expect("port");
        let active = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, bytes, connections) = (active.clone(), received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                connections.fetch_add(1, Ordering::SeqCst);
                let (counter, bytes) = (counter.clone(), bytes.clone());
                counter.fetch_add(1, Ordering::SeqCst);
                let behaviour = match behaviour {
                    Behaviour::RequestTimeout {
                        every_connection: false,
                    } if connections.load(Ordering::SeqCst) > 1 => Behaviour::KeepAlive,
                    other => other,
                };
                std::thread::spawn(move || {
                    let _ = serve(stream, behaviour, &bytes);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            active,
            received,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(stream: TcpStream, behaviour: Behaviour, received: &AtomicUsize) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    if let Behaviour::KeepAlive | Behaviour::DropSecond = behaviour {
        let mut served = 0;
        while let Some(request_line) = read_request(&mut reader)? {
            served += 1;
            if served == 2 && matches!(behaviour, Behaviour::DropSecond) {
                return Ok(());
            }
            let answer = json!({"request": request_line.trim_end(), "on_this_connection": served})
                .to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                answer.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(answer.as_bytes())?;
        }
        return Ok(());
    }
    let Some((request_line, headers)) = read_head(&mut reader)? else {
        return Ok(());
    };
    if let Behaviour::RequestTimeout { .. } = behaviour {
        return out.write_all(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    if let Behaviour::CountBody = behaviour {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut chunk)? {
                0 => return Ok(()),
                n => received.fetch_add(n, Ordering::SeqCst),
            };
        }
    }
    let body = read_body(&mut reader, &headers)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match behaviour {
        // Handled before the body is read, or on their own connection loop.
        Behaviour::CountBody
        | Behaviour::KeepAlive
        | Behaviour::DropSecond
        | Behaviour::RequestTimeout { .. } => Ok(()),
        Behaviour::Silent => {
            until_closed(&mut reader);
            Ok(())
        }
        Behaviour::StallBody => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789")?;
            out.flush()?;
            until_closed(&mut reader);
            Ok(())
        }
        Behaviour::SlowBody => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\n0123456789")?;
            out.flush()?;
            std::thread::sleep(SLOW_BODY_PAUSE);
            out.write_all(b"abcdefghij")
        }
        Behaviour::Echo if target.starts_with("/users/mirror") => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(&body)
        }
        Behaviour::Echo => {
            let answer = json!({"method": method, "target": target, "headers": headers, "body_len": body.len()}).to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close, X-Hop-Resp\r\nX-Hop-Resp: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-End-To-End: kept\r\n\r\n",
                answer.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(answer.as_bytes())
        }
    }
}

/// Reads and drops what comes until the peer closes (or the read timeout passes): a stall
/// that lasts as long as the gateway waits, whatever its timeout, not a guess at it.
fn until_closed(reader: &mut impl Read) {
    let mut sink = [0u8; 1024];
    while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
}

/// One whole request (head and body); its request line, or `None` once the peer closed.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let Some((request_line, headers)) = read_head(reader)? else {
        return Ok(None);
    };
    read_body(reader, &headers)?;
    Ok(Some(request_line))
}

/// Header values by lowercased name, in arrival order.
type Headers = BTreeMap<String, Vec<String>>;

/// A request line and its headers, or `None` once the peer closed.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<(String, Headers)>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut headers = Headers::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    Ok(Some((request_line, headers)))
}

fn read_body(reader: &mut impl BufRead, headers: &Headers) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.first())
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|t| t.contains("chunked")))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(body)
}

/// A raw HTTP/1.1 exchange (the request must ask for `Connection: close`): status, headers, body.
pub fn raw_request(port: u16, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
