//! Rate limits on the generating routes and on verdict recomputations (each with its own
//! rates): one token bucket per API key and one per client network (an IPv4 address, or the /64 of an IPv6 address, the block a single subscriber
//! usually holds). A request needs a token from each bucket that applies; without one it is
//! refused with `429 rate_limited` and a `retry-after` in whole seconds, before anything is
//! held or computed. Loopback callers have no network bucket (they are the operator); a key
//! is limited wherever it comes from.
//!
//! Each table holds at most [`TABLE_LEN_MAX`] buckets. When it is full, buckets that have
//! refilled completely (callers idle long enough to be forgotten without loss) are dropped;
//! if every bucket is still in use, the new caller is refused rather than the table grown, so
//! a flood of distinct addresses costs bounded memory. Refusals are counted with every other
//! response (`blyan_http_requests_total` with status 429).

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use blyan_node::Node;

use crate::ApiError;

/// Most callers tracked per table.
pub(crate) const TABLE_LEN_MAX: usize = 100_000;

/// A token bucket's state: tokens left and when they were counted.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by caller: `burst` tokens at most, refilled at `per_s` tokens a second.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    per_s: f64,
    burst: f64,
    len_max: usize,
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// `per_minute` requests a minute sustained, `burst` at once; `None` when `per_minute`
    /// is 0 (no limit).
    pub(crate) fn new(per_minute: u32, burst: u32, len_max: usize) -> Option<Buckets<K>> {
        (per_minute > 0).then(|| Buckets {
            per_s: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            len_max,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `key` at `now`, or says how long until one is there.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let refill = |b: &Bucket| -> f64 {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_s)
                .min(self.burst)
        };
        if !table.contains_key(key) && table.len() >= self.len_max {
            table.retain(|_, b| refill(b) < self.burst);
            if table.len() >= self.len_max {
                return Err(Duration::from_secs_f64(1.0 / self.per_s));
            }
        }
        let bucket = table.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = refill(bucket);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_s))
        }
    }
}

/// The network a peer address counts under: itself for IPv4 (and IPv4-mapped IPv6), its
/// /64 for IPv6.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The node's rate limits on the generating routes.
#[derive(Debug)]
pub(crate) struct Limits {
    by_key: Option<Buckets<String>>,
    by_network: Option<Buckets<IpAddr>>,
}

impl Limits {
    /// Per key `key` and per network `network`, each (per minute, burst).
    fn new(key: (u32, u32), network: (u32, u32)) -> Limits {
        Limits {
            by_key: Buckets::new(key.0, key.1, TABLE_LEN_MAX),
            by_network: Buckets::new(network.0, network.1, TABLE_LEN_MAX),
        }
    }

    /// The limits on the generating routes.
    pub(crate) fn of(node: &Node) -> Limits {
        let c = node.config();
        Limits::new(
            (c.rate_limit_key_per_min, c.rate_limit_key_burst),
            (c.rate_limit_ip_per_min, c.rate_limit_ip_burst),
        )
    }

    /// The limits on the sync read path: per client network only (its callers bring no key).
    pub(crate) fn sync(node: &Node) -> Limits {
        let c = node.config();
        Limits {
            by_key: None,
            by_network: Buckets::new(
                c.rate_limit_sync_per_min,
                c.rate_limit_sync_burst,
                TABLE_LEN_MAX,
            ),
        }
    }

    /// The limits on verdict recomputations: the same two tables, with their own rates.
    pub(crate) fn verify(node: &Node) -> Limits {
        let c = node.config();
        let rate = (c.rate_limit_verify_per_min, c.rate_limit_verify_burst);
        Limits::new(rate, rate)
    }
}

/// The middleware: a token from the caller's network bucket (unless on loopback), then from
/// its key's bucket (if it brings a bearer token).
pub(crate) async fn limit(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let (Some(buckets), Some(ip)) = (&limits.by_network, peer)
        && !ip.is_loopback()
        && let Err(wait) = buckets.take(&network_of(ip), now)
    {
        return refuse(wait, "this network");
    }
    // A malformed header has no key bucket; the handler refuses it with its own error.
    let key = crate::billing::bearer(req.headers()).ok().flatten();
    if let (Some(buckets), Some(key)) = (&limits.by_key, key)
        && let Err(wait) = buckets.take(&key, now)
    {
        return refuse(wait, "this API key");
    }
    next.run(req).await
}

fn refuse(wait: Duration, whom: &str) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from {whom}; retry in {seconds} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_its_rate() {
        let b: Buckets<u8> = Buckets::new(60, 3, 10).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take(&1, t0).unwrap();
        }
        let wait = b.take(&1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        // Another caller has its own bucket.
        b.take(&2, t0).unwrap();
        // One token a second comes back, never more than the burst.
        b.take(&1, t0 + Duration::from_millis(1000)).unwrap();
        assert!(b.take(&1, t0 + Duration::from_millis(1500)).is_err());
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            b.take(&1, later).unwrap();
        }
        assert!(b.take(&1, later).is_err());
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        assert!(Buckets::<u8>::new(0, 5, 10).is_none());
    }

    #[test]
    fn a_full_table_forgets_idle_callers_and_refuses_when_all_are_busy() {
        let b: Buckets<u32> = Buckets::new(60, 2, 4).unwrap();
        let t0 = Instant::now();
        for k in 0..4 {
            b.take(&k, t0).unwrap();
        }
        // Every bucket is partly spent: a fifth caller is refused, the table not grown.
        assert!(b.take(&4, t0).is_err());
        assert_eq!(b.table.lock().unwrap().len(), 4);
        // A second later all four have refilled; they are dropped for the newcomer.
        b.take(&4, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(b.table.lock().unwrap().len(), 1);
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn take_timing() {
        let b: Buckets<String> = Buckets::new(600, 60, TABLE_LEN_MAX).unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("bly_{i:032x}")).collect();
        let n = 2_000_000;
        let start = Instant::now();
        for i in 0..n {
            let _ = std::hint::black_box(b.take(&keys[i % keys.len()], Instant::now()));
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / n as f64;
        println!("{ns:.0} ns per take over 10,000 keys");
    }

    #[test]
    fn ipv6_callers_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(network_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
