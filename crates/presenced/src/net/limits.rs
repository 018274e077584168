//! The connection cap and each client address's fair share of it.
//!
//! Below the cap every connection is admitted. At the cap, a connection from an address that
//! holds at least two fewer connections than the busiest address takes one of that address's
//! connections (the one in a request head the longest, else idle the longest, else any but a
//! stream); otherwise it is refused. So one address, or a few, can fill an empty server, but
//! cannot keep anyone else out: every newcomer gets in until all addresses hold about the same
//! number (max-min fairness). Addresses are IPv4 addresses and IPv6 /64 prefixes (one host
//! commonly has a whole /64).
//!
//! Why not a fixed per-address limit: behind a proxy or a corporate NAT, one address is many
//! users, and a fixed limit would cut them off while the server has room.
use super::conn::{ConnState, Expired, Timeouts};
use super::metrics::ConnectionMetrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Connections evicted whose tasks have not yet closed them; while this many are pending, no
/// more are evicted, so the descriptors in use stay within the cap plus this (the descriptor
/// reserve covers it).
pub const MAX_CLOSING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(u32),
    V6Prefix(u64),
}

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4.into()),
                None => AddrKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections counted against the cap.
    total: usize,
    /// Evicted, not yet closed.
    closing: usize,
    next_id: u64,
    by_addr: HashMap<AddrKey, HashMap<u64, Arc<ConnState>>>,
    draining: bool,
}

#[derive(Debug)]
pub struct Limiter {
    cap: usize,
    metrics: ConnectionMetrics,
    inner: Mutex<Inner>,
    /// Woken whenever the last connection closes.
    empty: Notify,
}

/// A connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
    key: AddrKey,
    id: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Admitted after asking a connection of another address to close.
    AdmittedByEviction,
    Refused,
}

impl Limiter {
    pub fn new(cap: usize, metrics: ConnectionMetrics) -> Arc<Limiter> {
        let cap = cap.max(1);
        metrics.max.set(cap as i64);
        Arc::new(Limiter {
            cap,
            metrics,
            inner: Mutex::new(Inner::default()),
            empty: Notify::new(),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    // The lock guards plain bookkeeping, taken once when a connection opens and once when it
    // closes, never per request; poisoning would only follow a panic in this module.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `ip`, evicting one of the busiest address's if the cap is
    /// reached and `ip` holds less than its fair share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, state: &Arc<ConnState>) -> (Admission, Option<Slot>) {
        let key = AddrKey::of(ip);
        let mut inner = self.lock();
        if inner.draining {
            return (Admission::Refused, None);
        }
        let mut admission = Admission::Admitted;
        if inner.total >= self.cap {
            let mine = inner.by_addr.get(&key).map_or(0, HashMap::len);
            let busiest = inner
                .by_addr
                .iter()
                .max_by_key(|(_, conns)| conns.len())
                .map(|(k, conns)| (*k, conns.len()));
            let victim = match busiest {
                Some((busy_key, n)) if n >= mine + 2 && inner.closing < MAX_CLOSING => {
                    let conns = &inner.by_addr[&busy_key];
                    pick_victim(conns).map(|id| (busy_key, id))
                }
                _ => None,
            };
            let Some((busy_key, id)) = victim else {
                return (Admission::Refused, None);
            };
            let conns = inner
                .by_addr
                .get_mut(&busy_key)
                .expect("the busiest address is present");
            let evicted = conns.remove(&id).expect("the victim is present");
            if conns.is_empty() {
                inner.by_addr.remove(&busy_key);
            }
            inner.total -= 1;
            inner.closing += 1;
            evicted.close_now();
            admission = Admission::AdmittedByEviction;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.total += 1;
        inner.by_addr.entry(key).or_default().insert(id, state.clone());
        self.metrics.open.set(inner.total as i64);
        drop(inner);
        let slot = Slot {
            limiter: self.clone(),
            key,
            id,
        };
        (admission, Some(slot))
    }

    /// Look at every connection (at `now_ms` on the reaper's clock) and ask those in a head or
    /// idle past their timeout to close; returns how many of each.
    pub fn reap(&self, now_ms: u64, timeouts: &Timeouts) -> (usize, usize) {
        let inner = self.lock();
        let (mut heads, mut idle) = (0, 0);
        for c in inner.by_addr.values().flat_map(HashMap::values) {
            match c.reap(now_ms, timeouts) {
                Some(Expired::HeaderTimeout) => heads += 1,
                Some(Expired::IdleTimeout) => idle += 1,
                None => continue,
            }
            c.close_now();
        }
        (heads, idle)
    }

    /// Connections open (not counting evicted ones still closing).
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Refuse new connections and ask every open one to drain.
    pub fn drain_all(&self) {
        let mut inner = self.lock();
        inner.draining = true;
        inner.by_addr.values().flat_map(HashMap::values).for_each(|c| c.drain());
    }

    /// Ask every open connection to close now.
    pub fn close_all(&self) {
        let inner = self.lock();
        inner
            .by_addr
            .values()
            .flat_map(HashMap::values)
            .for_each(|c| c.close_now());
    }

    /// Resolves when no connection is open or closing.
    pub async fn until_empty(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                if inner.total == 0 && inner.closing == 0 {
                    return;
                }
            }
            notified.await;
        }
    }

    fn release(&self, key: AddrKey, id: u64) {
        let mut inner = self.lock();
        let mine = inner.by_addr.get_mut(&key).and_then(|conns| conns.remove(&id));
        match mine {
            Some(_) => {
                inner.total -= 1;
                if inner.by_addr.get(&key).is_some_and(HashMap::is_empty) {
                    inner.by_addr.remove(&key);
                }
            }
            // Evicted earlier: it was uncounted then.
            None => inner.closing -= 1,
        }
        self.metrics.open.set(inner.total as i64);
        if inner.total == 0 && inner.closing == 0 {
            self.empty.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.key, self.id);
    }
}

/// The connection of one address to give up: the one reading a request head the longest
/// (slow clients first), else the one idle the longest, else one serving a request, and a
/// stream only if nothing else is left.
fn pick_victim(conns: &HashMap<u64, Arc<ConnState>>) -> Option<u64> {
    conns.iter().min_by_key(|(_, c)| c.eviction_rank()).map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conn::ListenerInfo;
    use crate::net::metrics::ConnectionMetrics;
    use std::net::SocketAddr;

    fn conn(ip: &str) -> Arc<ConnState> {
        let info = Arc::new(ListenerInfo {
            tls: false,
            serves_metrics: true,
            metrics_only: false,
            public_url: None,
        });
        let peer: SocketAddr = SocketAddr::new(ip.parse().unwrap(), 1000);
        Arc::new(ConnState::new(peer, peer, info, ConnectionMetrics::default()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_ipv4_hosts_and_ipv6_prefixes() {
        assert_eq!(AddrKey::of(ip("10.0.0.1")), AddrKey::of(ip("::ffff:10.0.0.1")));
        assert_ne!(AddrKey::of(ip("10.0.0.1")), AddrKey::of(ip("10.0.0.2")));
        assert_eq!(AddrKey::of(ip("2001:db8::1")), AddrKey::of(ip("2001:db8::ffff:1")));
        assert_ne!(AddrKey::of(ip("2001:db8::1")), AddrKey::of(ip("2001:db8:0:1::1")));
    }

    #[tokio::test]
    async fn at_the_cap_newcomers_take_from_the_busiest_address_until_shares_are_even() {
        let limiter = Limiter::new(4, ConnectionMetrics::default());
        let mut held = Vec::new();
        let attacker: Vec<_> = (0..4).map(|_| conn("10.0.0.66")).collect();
        for c in &attacker {
            let (a, slot) = limiter.admit(ip("10.0.0.66"), c);
            assert_eq!(a, Admission::Admitted);
            held.push(slot.unwrap());
        }
        // Full: the attacker cannot add a fifth.
        assert_eq!(limiter.admit(ip("10.0.0.66"), &conn("10.0.0.66")).0, Admission::Refused);
        // A newcomer evicts one of the attacker's (4 >= 0 + 2), and so does a second address.
        let (a, s1) = limiter.admit(ip("10.0.0.1"), &conn("10.0.0.1"));
        assert_eq!(a, Admission::AdmittedByEviction);
        let (a, s2) = limiter.admit(ip("10.0.0.2"), &conn("10.0.0.2"));
        assert_eq!(a, Admission::AdmittedByEviction);
        // 2/1/1: a second connection of 10.0.0.1 would leave 1/2/1, no fairer: refused.
        assert_eq!(limiter.admit(ip("10.0.0.1"), &conn("10.0.0.1")).0, Admission::Refused);
        // Exactly two attacker connections were asked to close.
        let asked: Vec<_> = attacker.iter().map(|c| closed(c)).collect();
        assert_eq!(asked.iter().filter(|a| **a).count(), 2);
        assert_eq!(limiter.open(), 4);
        drop((s1, s2));
        assert_eq!(limiter.open(), 2);
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(1), limiter.until_empty())
            .await
            .expect("empty once every slot is dropped");
    }

    #[test]
    fn the_victim_is_a_slow_head_before_an_idle_one_before_a_busy_one() {
        let limiter = Limiter::new(3, ConnectionMetrics::default());
        let busy = conn("10.0.0.66");
        let idle = conn("10.0.0.66");
        let head = conn("10.0.0.66");
        let mut slots = Vec::new();
        for c in [&busy, &idle, &head] {
            slots.push(limiter.admit(ip("10.0.0.66"), c).1.unwrap());
        }
        super::super::conn::tests_support::set_busy(&busy);
        super::super::conn::tests_support::set_idle(&idle);
        let _one = limiter.admit(ip("10.0.0.1"), &conn("10.0.0.1"));
        assert!(closed(&head));
        assert!(!closed(&idle));
        let _two = limiter.admit(ip("10.0.0.2"), &conn("10.0.0.2"));
        assert!(closed(&idle));
        assert!(!closed(&busy));
    }

    /// Whether the connection was asked to close.
    fn closed(c: &ConnState) -> bool {
        use std::future::Future as _;
        let f = std::pin::pin!(c.asked_to_close());
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }
}
