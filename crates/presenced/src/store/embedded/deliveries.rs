//! What the embedded store keeps for the deliveries port: each subscription's acknowledged
//! position, the queued lifecycle notices, and the consumers' leases on both. Positions and
//! notices are durable (redb tables `progress` and `deliveries`); leases live in memory only,
//! since one process holds the store and a restart starts with no consumer.
use crate::store::{LifecycleNotice, Position};
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct DeliveryBook {
    progress: HashMap<String, u64>,
    notices: BTreeMap<u64, LifecycleNotice>,
    leases: HashMap<String, Lease>,
    notice_leases: HashMap<u64, Lease>,
}

struct Lease {
    consumer: String,
    until: Timestamp,
}

impl Lease {
    fn held_by_other(&self, consumer: &str, now: Timestamp) -> bool {
        self.consumer != consumer && self.until > now
    }
}

impl DeliveryBook {
    pub fn progress(&self, id: &str) -> Option<u64> {
        self.progress.get(id).copied()
    }

    /// Move a subscription's position forward (never back); returns whether it moved.
    pub fn advance(&mut self, id: &str, to: u64) -> bool {
        match self.progress.get_mut(id) {
            Some(at) if *at < to => {
                *at = to;
                true
            }
            _ => false,
        }
    }

    pub fn start(&mut self, id: &str, at: u64) {
        self.progress.insert(id.to_owned(), at);
    }

    pub fn forget(&mut self, id: &str) {
        self.progress.remove(id);
        self.leases.remove(id);
    }

    pub fn queue(&mut self, notice: LifecycleNotice) {
        self.notices.insert(notice.id, notice);
    }

    pub fn finish(&mut self, id: u64) {
        self.notices.remove(&id);
        self.notice_leases.remove(&id);
    }

    pub fn notices(&self) -> usize {
        self.notices.len()
    }

    /// Lease every subscription in `ids` that no other consumer holds; returns the leased ones
    /// with their positions.
    pub fn claim<'a>(
        &mut self,
        ids: impl Iterator<Item = &'a String>,
        consumer: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Vec<(String, Position)> {
        let mut out = Vec::new();
        for id in ids {
            let Some(at) = self.progress.get(id) else { continue };
            if self.leases.get(id).is_some_and(|l| l.held_by_other(consumer, now)) {
                continue;
            }
            self.leases.insert(
                id.clone(),
                Lease {
                    consumer: consumer.to_owned(),
                    until,
                },
            );
            out.push((id.clone(), Position::from_sequence(*at)));
        }
        out
    }

    pub fn release(&mut self, consumer: &str, ids: &[String]) {
        for id in ids {
            if self.leases.get(id).is_some_and(|l| l.consumer == consumer) {
                self.leases.remove(id);
            }
        }
    }

    pub fn claim_notices(
        &mut self,
        consumer: &str,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Vec<LifecycleNotice> {
        let mut out = Vec::new();
        for (id, notice) in &self.notices {
            if out.len() >= limit {
                break;
            }
            if self
                .notice_leases
                .get(id)
                .is_some_and(|l| l.held_by_other(consumer, now))
            {
                continue;
            }
            self.notice_leases.insert(
                *id,
                Lease {
                    consumer: consumer.to_owned(),
                    until,
                },
            );
            out.push(notice.clone());
        }
        out
    }

    /// Whether a `missed` notice for this subscription is queued and not yet sent: another one
    /// would tell the subscriber nothing new.
    pub fn missed_pending(&self, subscription_id: &str) -> bool {
        self.notices.values().any(|n| {
            n.notice.subscription_id == subscription_id && n.notice.event == crate::store::LifecycleEvent::Missed
        })
    }
}
