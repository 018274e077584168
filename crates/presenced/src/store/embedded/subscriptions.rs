//! The in-memory subscription index: by id for the API, by user for fan-out at commit time.
use crate::notify::subscription::Subscription;
use presence_core::{TenantId, UserId};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct SubscriptionIndex {
    by_id: HashMap<String, Arc<Subscription>>,
    by_user: HashMap<(TenantId, UserId), Vec<String>>,
}

impl SubscriptionIndex {
    pub fn put(&mut self, subscription: Arc<Subscription>) {
        self.remove(&subscription.id);
        for user in &subscription.users {
            self.by_user
                .entry((subscription.tenant.clone(), user.clone()))
                .or_default()
                .push(subscription.id.clone());
        }
        self.by_id.insert(subscription.id.clone(), subscription);
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<Subscription>> {
        let old = self.by_id.remove(id)?;
        for user in &old.users {
            let key = (old.tenant.clone(), user.clone());
            if let Some(ids) = self.by_user.get_mut(&key) {
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    self.by_user.remove(&key);
                }
            }
        }
        Some(old)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.by_id.get(id).cloned()
    }

    pub fn matching(&self, tenant: &TenantId, user: &UserId) -> Vec<Arc<Subscription>> {
        let key = (tenant.clone(), user.clone());
        self.by_user
            .get(&key)
            .map_or_else(Vec::new, |ids| ids.iter().filter_map(|id| self.get(id)).collect())
    }

    pub fn all(&self, tenant: Option<&TenantId>) -> Vec<Arc<Subscription>> {
        let mut out: Vec<_> = self
            .by_id
            .values()
            .filter(|s| tenant.is_none_or(|t| &s.tenant == t))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
