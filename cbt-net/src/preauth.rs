//! Connections that have not authenticated yet.
//!
//! Anyone who can reach the port can open connections and say nothing. Such
//! connections must never take a transfer slot, and must never keep a
//! legitimate client out. So before authentication a connection holds only a
//! [`Ticket`] from a small budget ([`PreAuthLimits`]: per source address
//! and in total) and has a short deadline for the whole handshake (TLS
//! included). A new connection over the budget does not wait and is not
//! refused: it evicts the *oldest* unauthenticated connection (of the same
//! address first). A client that completes its handshake within a round
//! trip or two therefore always gets through, however many silent ones are
//! opened, while their number stays bounded. Transfer slots are taken only
//! after authentication.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::client::{accept_stream, Halves};
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::handshake::{self, Request, Secret};
use crate::tls::TlsServer;

/// Budget and deadline of unauthenticated connections.
#[derive(Debug, Clone, Copy)]
pub struct PreAuthLimits {
    /// At most this many unauthenticated connections at once.
    pub total: usize,
    /// At most this many from one source address.
    pub per_address: usize,
    /// The whole handshake (TLS, preamble, HELLO, AUTH) must end within this.
    pub deadline: Duration,
}

impl Default for PreAuthLimits {
    fn default() -> Self {
        PreAuthLimits {
            total: 64,
            per_address: 16,
            deadline: Duration::from_secs(5),
        }
    }
}

/// The unauthenticated connections of one listener.
#[derive(Debug)]
pub(crate) struct PreAuth {
    limits: PreAuthLimits,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    /// Oldest first: id, source address, and the eviction signal (dropping
    /// the sender evicts).
    entries: VecDeque<(u64, IpAddr, oneshot::Sender<()>)>,
    evicted: u64,
}

/// A place in the budget; dropping it (authenticated or gone) frees it.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<PreAuth>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut w) = self.gate.waiting.lock() {
            w.entries.retain(|(id, _, _)| *id != self.id);
        }
    }
}

impl PreAuth {
    pub(crate) fn new(limits: PreAuthLimits) -> Arc<PreAuth> {
        Arc::new(PreAuth {
            limits,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// Admits a new connection from `addr`, evicting the oldest waiting one
    /// (from `addr` if it is over its own budget) when the budget is full.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut id = 0;
        if let Ok(mut w) = self.waiting.lock() {
            let from_addr = w.entries.iter().filter(|(_, a, _)| *a == addr).count();
            let victim = if from_addr >= self.limits.per_address.max(1) {
                w.entries.iter().position(|(_, a, _)| *a == addr)
            } else if w.entries.len() >= self.limits.total.max(1) {
                Some(0)
            } else {
                None
            };
            if let Some(i) = victim {
                // Dropping the sender wakes the evicted connection's task.
                w.entries.remove(i);
                w.evicted += 1;
                if w.evicted.is_power_of_two() {
                    tracing::warn!(
                        evicted = w.evicted,
                        "unauthenticated connections over budget; evicting the oldest"
                    );
                }
            }
            w.next_id += 1;
            id = w.next_id;
            w.entries.push_back((id, addr, tx));
        }
        Ticket {
            gate: Arc::clone(self),
            id,
            evicted: rx,
        }
    }

    /// Unauthenticated connections now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.entries.len())
    }
}

/// Runs the server side of the handshake on a fresh connection under its
/// ticket: fails at the deadline or when evicted. The ticket is given
/// back to the budget when this returns.
pub(crate) async fn authenticate(
    stream: TcpStream,
    peer: &str,
    tls: Option<&TlsServer>,
    secret: Option<&Secret>,
    ticket: Ticket,
    deadline: Duration,
) -> Result<(Halves, Request)> {
    let mut ticket = ticket;
    let timeout = || Error::Timeout {
        peer: peer.to_string(),
        seconds: deadline.as_secs(),
    };
    let started = tokio::time::Instant::now();
    let handshake = async {
        let (mut reader, mut writer) = accept_stream(stream, tls, peer, deadline).await?;
        let left = deadline.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(
            left,
            handshake::server(&mut reader, &mut writer, peer, secret, deadline),
        )
        .await;
        let e = match answer {
            Ok(Ok(request)) => return Ok(((reader, writer), request)),
            Ok(Err(e)) => e,
            Err(_) => timeout(),
        };
        // Tell a slow or confused client why (never a wrong secret's holder).
        if !matches!(e, Error::Auth { .. }) {
            let message = Frame::Error {
                message: e.to_string(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&message)).await;
        }
        Err(e)
    };
    tokio::select! {
        r = handshake => r,
        _ = &mut ticket.evicted => Err(Error::Refused(format!(
            "{peer}: evicted before authenticating (too many unauthenticated connections)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_is_evicted_per_address_then_in_total() {
        let gate = PreAuth::new(PreAuthLimits {
            total: 3,
            per_address: 2,
            deadline: Duration::from_secs(1),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut a1 = gate.admit(a);
        let mut a2 = gate.admit(a);
        let mut a3 = gate.admit(a); // over a's budget: a1 goes
        assert!(a1
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(a2
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert_eq!(gate.waiting(), 2);
        let mut b1 = gate.admit(b);
        assert_eq!(gate.waiting(), 3);
        let b2 = gate.admit(b); // over the total: the oldest (a2) goes
        assert!(a2
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(a3
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert!(b1
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        drop(b2);
        drop(b1);
        assert_eq!(gate.waiting(), 1);
        drop((a1, a2, a3));
        assert_eq!(gate.waiting(), 0);
    }
}
