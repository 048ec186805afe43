//! The caller's HTTP, on the thread that asks. A thread that asks hosts for a layer's
//! experts (an engine lane) borrows a [`Local`] (a current-thread Tokio runtime and its own
//! HTTP/1.1 connections to each host) for the layer, so a request crosses no other thread of
//! this process: the asking thread writes it, waits on its sockets and on the exchange's
//! deadlines at once, and reads the answer itself. Handing each request to a caller thread
//! and back cost two thread wake-ups per request, and on two shared cores the wake-ups, not
//! the requests' own work, were most of what a remote expert cost (docs/BENCHMARKS.md,
//! session 22).
//!
//! A connection's task runs only while some thread waits in [`Local::block_on`]; between
//! two layers a connection is idle anyway.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept per host, per [`Local`].
const IDLE_PER_HOST: usize = 8;

/// A runtime and its connections, used by one thread at a time.
pub(super) struct Local {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    idle: RefCell<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
    /// Connections opened.
    opened: Cell<u64>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("opened", &self.opened.get())
            .finish_non_exhaustive()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Without waiting for its tasks (the idle connections), so that it may be dropped
        // anywhere, an async context included.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Local {
    pub(super) fn new() -> std::io::Result<Local> {
        Ok(Local {
            rt: Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()?,
            ),
            idle: RefCell::new(HashMap::new()),
            opened: Cell::new(0),
        })
    }

    /// Runs `f` to its end on this thread, driving the connections meanwhile. Not from
    /// inside an async runtime (Tokio refuses to block there).
    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("a Local's runtime lives until it is dropped")
            .block_on(f)
    }

    /// Connections opened so far.
    #[cfg(test)]
    pub(super) fn opened(&self) -> u64 {
        self.opened.get()
    }

    /// POSTs `body` to `http://{api}{path}` with `headers`; the answer's body if the status
    /// is 200 and the body at most `limit` bytes, all within `timeout`; `None` otherwise.
    /// The connection is kept for the next request to `api` only after a whole answer.
    pub(super) async fn post(
        &self,
        api: &str,
        path: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> Option<Bytes> {
        let exchange = async {
            let mut sender = self.connection(api).await?;
            let mut request = hyper::Request::post(path).header(hyper::header::HOST, api);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            let request = request.body(Full::new(Bytes::from(body))).ok()?;
            let response = sender.send_request(request).await.ok()?;
            if response.status() != hyper::StatusCode::OK {
                return None;
            }
            let answer = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .ok()?
                .to_bytes();
            self.keep(api, sender);
            Some(answer)
        };
        tokio::time::timeout(timeout, exchange).await.ok().flatten()
    }

    /// A connection to `api` ready for a request: an idle one, or a new one.
    async fn connection(&self, api: &str) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle.borrow_mut().get_mut(api).and_then(Vec::pop);
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        let stream = tokio::net::TcpStream::connect(api).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        self.opened.set(self.opened.get() + 1);
        // Ends when the connection closes, or when its sender is dropped mid-request.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Some(sender)
    }

    fn keep(&self, api: &str, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.borrow_mut();
        let kept = idle.entry(api.to_owned()).or_default();
        if kept.len() < IDLE_PER_HOST {
            kept.push(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A minimal HTTP/1.1 server on loopback: answers every request on a connection with
    /// 200 and the request's body reversed, keeping the connection; `hold` is waited on
    /// before each answer.
    fn server(
        hold: Option<std::sync::mpsc::Receiver<()>>,
    ) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                // The request line, then the headers up to the blank line.
                let mut first = true;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == "\r\n" && !first {
                        break;
                    }
                    first = false;
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().expect("length");
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                if let Some(hold) = &hold
                    && hold.recv().is_err()
                {
                    return;
                }
                body.reverse();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
                    return;
                }
            }
        });
        (addr, handle)
    }

    #[test]
    fn a_thread_keeps_its_connection_and_a_held_host_holds_up_no_other() {
        let local = Local::new().expect("runtime");
        let (good, _) = server(None);
        async fn post(local: &Local, api: &str, body: &[u8]) -> Option<Vec<u8>> {
            local
                .post(
                    api,
                    "/x",
                    &[],
                    body.to_vec(),
                    1 << 10,
                    Duration::from_secs(10),
                )
                .await
                .map(|b| b.to_vec())
        }
        // Twenty requests one after another: one connection.
        for i in 0..20u8 {
            let answer = local.block_on(post(&local, &good, &[i, 1, 2]));
            assert_eq!(answer, Some(vec![2, 1, i]));
        }
        assert_eq!(local.opened(), 1, "a connection per request");
        // A host that holds its answer until the other host's answer is in: both are asked
        // at once on this one thread, so the held one cannot hold up the other.
        let (release, hold) = std::sync::mpsc::channel();
        let (held, _) = server(Some(hold));
        let (a, b) = local.block_on(async {
            let held_answer = post(&local, &held, b"ab");
            let other = async {
                let answer = post(&local, &good, b"cd").await;
                release.send(()).expect("release");
                answer
            };
            tokio::join!(held_answer, other)
        });
        assert_eq!(b, Some(b"dc".to_vec()));
        assert_eq!(a, Some(b"ba".to_vec()));
        // An answer over the limit, and a host that is not there: no answer.
        assert_eq!(
            local.block_on(local.post(&good, "/x", &[], vec![7; 64], 16, Duration::from_secs(10))),
            None
        );
        let gone = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = gone.local_addr().expect("addr").to_string();
        drop(gone);
        assert_eq!(local.block_on(post(&local, &addr, b"x")), None);
    }
}
