//! How the engine reaches peers. [`Transport`] is Blyan's own small trait; [`P2p`] puts
//! commonware's channels (authenticated or simulated) behind it and [`Http`] the read path
//! of a node's public API, so an upgrade or a change of engine touches this file.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::time::Duration;

use commonware_p2p::{Receiver, Recipients, Sender};
use futures::StreamExt;
use futures::channel::mpsc;

use crate::engine::PeerKey;
use crate::wire::MSG_LEN_MAX;

/// What a transport delivers.
#[derive(Debug)]
pub enum Incoming {
    /// A message from a peer.
    Message(PeerKey, Vec<u8>),
    /// A peer could not be reached: what was sent to it will not be answered.
    Unreachable(PeerKey),
}

/// A message-passing link to peers.
pub trait Transport: Send + 'static {
    /// Queues `bytes` for `to`; false when it could not even be queued.
    fn send(&mut self, to: &PeerKey, bytes: Vec<u8>) -> bool;
    /// The next delivery; `None` once the transport closed.
    fn recv(&mut self) -> impl Future<Output = Option<Incoming>> + Send;
}

/// One channel of a commonware p2p network.
#[derive(Debug)]
pub struct P2p<S, R> {
    sender: S,
    receiver: R,
}

impl<S, R> P2p<S, R> {
    /// The transport over a registered channel.
    pub fn new((sender, receiver): (S, R)) -> Self {
        P2p { sender, receiver }
    }
}

impl<S, R> Transport for P2p<S, R>
where
    S: Sender<PublicKey = PeerKey>,
    R: Receiver<PublicKey = PeerKey>,
{
    fn send(&mut self, to: &PeerKey, bytes: Vec<u8>) -> bool {
        !self
            .sender
            .send(Recipients::One(to.clone()), bytes, false)
            .is_empty()
    }

    async fn recv(&mut self) -> Option<Incoming> {
        let (peer, buf) = self.receiver.recv().await.ok()?;
        Some(Incoming::Message(peer, buf.as_ref().to_vec()))
    }
}

/// The path under a node's API where the sync protocol is answered.
pub const RPC_PATH: &str = "/net/v1/rpc";

/// The pull-only read path: each message is POSTed to a peer's API at [`RPC_PATH`] and the
/// answer, if any, comes back as a message from that peer. Anyone may use it, admitted or
/// not; blocks are checked by hash and signature, so the key names a peer (for bans and
/// reports) without the HTTP exchange authenticating it.
#[derive(Debug)]
pub struct Http {
    urls: BTreeMap<PeerKey, String>,
    agent: ureq::Agent,
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl Http {
    /// The transport to `peers`, each an API address `HOST:PORT`; a request unanswered in
    /// `timeout` is dropped (the engine asks again elsewhere).
    pub fn new(peers: impl IntoIterator<Item = (PeerKey, String)>, timeout: Duration) -> Http {
        let (tx, rx) = mpsc::unbounded();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Http {
            urls: peers
                .into_iter()
                .map(|(k, addr)| (k, format!("http://{addr}{RPC_PATH}")))
                .collect(),
            agent,
            tx,
            rx,
        }
    }
}

impl Transport for Http {
    fn send(&mut self, to: &PeerKey, bytes: Vec<u8>) -> bool {
        let Some(url) = self.urls.get(to).cloned() else {
            return false;
        };
        let (agent, tx, peer) = (self.agent.clone(), self.tx.clone(), to.clone());
        // A blocking request on its own thread: the engine keeps a bounded number in flight.
        std::thread::spawn(move || {
            let Ok(mut response) = agent
                .post(&url)
                .header("content-type", "application/octet-stream")
                .send(&bytes[..])
            else {
                let _ = tx.unbounded_send(Incoming::Unreachable(peer));
                return;
            };
            if response.status().as_u16() != 200 {
                // 204 answers what asks for nothing; a refusal (rate limit, 5xx) is left to
                // the engine's timeout, which asks elsewhere.
                return;
            }
            let mut body = Vec::new();
            let read = response
                .body_mut()
                .as_reader()
                .take(MSG_LEN_MAX as u64 + 1)
                .read_to_end(&mut body);
            if read.is_ok() {
                let _ = tx.unbounded_send(Incoming::Message(peer, body));
            }
        });
        true
    }

    async fn recv(&mut self) -> Option<Incoming> {
        self.rx.next().await
    }
}
