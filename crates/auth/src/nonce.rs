//! Single-use login nonces, held in memory for a limited time and in a limited number.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use time::OffsetDateTime;

use crate::AuthError;

/// Characters in a nonce (EIP-4361 asks for at least 8 alphanumeric ones).
pub const NONCE_LEN: usize = 24;

#[derive(Debug)]
struct Entry {
    expires: OffsetDateTime,
    spent: bool,
}

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<String, Entry>,
    /// Nonces in the order they were issued, for expiry and eviction.
    order: VecDeque<String>,
}

/// The nonces this node handed out: each is valid for `ttl` after it was issued and can be
/// spent once. At most `capacity` are held; past that the oldest is forgotten (its holder's
/// login is refused as `unknown_nonce` and simply asks for a new one), so that asking for
/// nonces cannot exhaust the node's memory.
#[derive(Debug)]
pub struct Nonces {
    ttl: Duration,
    capacity: usize,
    book: Mutex<Book>,
}

impl Nonces {
    /// A book of nonces valid for `ttl`, holding at most `capacity` (at least 1).
    pub fn new(ttl: Duration, capacity: usize) -> Nonces {
        Nonces {
            ttl,
            capacity: capacity.max(1),
            book: Mutex::new(Book::default()),
        }
    }

    /// How long a nonce stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh nonce, valid from `now` for [`Nonces::ttl`]; returns it and its expiry.
    pub fn issue(&self, now: OffsetDateTime) -> (String, OffsetDateTime) {
        let mut rng = rand::rng();
        let nonce: String = (0..NONCE_LEN)
            .map(|_| {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                ALPHABET[rng.random_range(0..ALPHABET.len())] as char
            })
            .collect();
        let expires = now + self.ttl;
        let mut book = self.book.lock().expect("nonce book lock");
        book.forget_expired(now);
        while book.entries.len() >= self.capacity {
            let Some(oldest) = book.order.pop_front() else {
                break;
            };
            book.entries.remove(&oldest);
        }
        book.entries.insert(
            nonce.clone(),
            Entry {
                expires,
                spent: false,
            },
        );
        book.order.push_back(nonce.clone());
        (nonce, expires)
    }

    /// Spends `nonce` at `now`: `unknown_nonce` if this node never issued it (or forgot it),
    /// `used_nonce` if it was spent already, `expired_nonce` if its time is over.
    pub fn spend(&self, nonce: &str, now: OffsetDateTime) -> Result<(), AuthError> {
        let mut book = self.book.lock().expect("nonce book lock");
        let entry = book.entries.get_mut(nonce).ok_or(AuthError::UnknownNonce)?;
        if entry.spent {
            return Err(AuthError::UsedNonce);
        }
        if entry.expires <= now {
            return Err(AuthError::ExpiredNonce);
        }
        entry.spent = true;
        Ok(())
    }

    /// Nonces held now (issued and not yet forgotten).
    pub fn len(&self) -> usize {
        self.book.lock().expect("nonce book lock").entries.len()
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Book {
    /// Forgets nonces that expired more than a minute before `now` (kept that long so that a
    /// late login is told `expired_nonce`, not `unknown_nonce`).
    fn forget_expired(&mut self, now: OffsetDateTime) {
        while let Some(first) = self.order.front() {
            let gone = self
                .entries
                .get(first)
                .is_none_or(|e| e.expires + Duration::from_secs(60) < now);
            if !gone {
                break;
            }
            if let Some(first) = self.order.pop_front() {
                self.entries.remove(&first);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_spent_once_and_only_in_time() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let book = Nonces::new(Duration::from_secs(300), 10);
        let (n, expires) = book.issue(now);
        assert_eq!(n.len(), NONCE_LEN);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(expires, now + Duration::from_secs(300));
        assert_eq!(
            book.spend("never-issued", now),
            Err(AuthError::UnknownNonce)
        );
        assert_eq!(book.spend(&n, now), Ok(()));
        assert_eq!(book.spend(&n, now), Err(AuthError::UsedNonce));
        let (late, _) = book.issue(now);
        assert_eq!(
            book.spend(&late, now + Duration::from_secs(300)),
            Err(AuthError::ExpiredNonce)
        );
        assert_ne!(book.issue(now).0, book.issue(now).0);
    }

    #[test]
    fn the_book_is_bounded_and_forgets_the_oldest_and_the_expired() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let book = Nonces::new(Duration::from_secs(60), 3);
        let first = book.issue(now).0;
        let rest: Vec<String> = (0..3).map(|_| book.issue(now).0).collect();
        assert_eq!(book.len(), 3);
        assert_eq!(book.spend(&first, now), Err(AuthError::UnknownNonce));
        assert_eq!(book.spend(&rest[0], now), Ok(()));
        // Long after they expired, issuing forgets them all.
        book.issue(now + Duration::from_secs(3600));
        assert_eq!(book.len(), 1);
    }
}
