//! The keyspace: which partition a user is in, and every key's name.
//!
//! Everything of one partition shares the hash tag `{p<n>}` (the user records, the deadline
//! index, the change stream and its sequence, the connected-client and tenant sets), so one
//! function call may touch all of it in Cluster; the subscriptions share `{s}`. A user's partition
//! is CRC-32 of (tenant, user) mod P; P is recorded in Redis when the keyspace is created.
use presence_core::{TenantId, UserId, UserKey};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: usize,
}

impl Keys {
    /// `prefix` may not hold `{` or `}` (it would change every key's hash tag).
    pub fn new(prefix: &str, partitions: usize) -> Result<Keys, String> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(format!("{prefix:?} is not a usable key prefix (non-empty, no braces)"));
        }
        if partitions == 0 || partitions > crate::store::position::MAX_PARTITIONS {
            return Err(format!(
                "{partitions} partitions: choose 1 to {}",
                crate::store::position::MAX_PARTITIONS
            ));
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
            partitions,
        })
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    pub fn partition_of(&self, key: &UserKey) -> usize {
        let mut h = crc32fast::Hasher::new();
        h.update(key.tenant.as_str().as_bytes());
        h.update(&[0]);
        h.update(key.user.as_str().as_bytes());
        (h.finalize() as usize) % self.partitions
    }

    /// The partition count recorded for this keyspace.
    pub fn meta(&self) -> String {
        format!("{}:partitions", self.prefix)
    }

    fn tag(&self, p: usize) -> String {
        format!("{}:{{p{p}}}:", self.prefix)
    }

    /// A user's name inside a partition: `<tenant length>:<tenant><user>`, unambiguous whatever
    /// the ids hold.
    pub fn member(key: &UserKey) -> String {
        let tenant = key.tenant.as_str();
        format!("{}:{tenant}{}", tenant.len(), key.user.as_str())
    }

    pub fn parse_member(member: &[u8]) -> Option<UserKey> {
        let text = std::str::from_utf8(member).ok()?;
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let (tenant, user) = (rest.get(..len)?, rest.get(len..)?);
        Some(UserKey::new(TenantId::parse(tenant).ok()?, UserId::parse(user).ok()?))
    }

    /// The prefix of a partition's user records (a user's key is this and its member).
    pub fn users(&self, p: usize) -> String {
        format!("{}u:", self.tag(p))
    }

    pub fn user(&self, key: &UserKey) -> String {
        format!("{}{}", self.users(self.partition_of(key)), Self::member(key))
    }

    pub fn due(&self, p: usize) -> String {
        format!("{}due", self.tag(p))
    }

    pub fn log(&self, p: usize) -> String {
        format!("{}log", self.tag(p))
    }

    pub fn seq(&self, p: usize) -> String {
        format!("{}seq", self.tag(p))
    }

    /// The partition's user and session counts (a hash), for `/metrics`.
    pub fn counts(&self, p: usize) -> String {
        format!("{}counts", self.tag(p))
    }

    pub fn clients(&self, p: usize) -> String {
        format!("{}clients", self.tag(p))
    }

    pub fn tenant(&self, p: usize, tenant: &TenantId) -> String {
        format!("{}t:{}", self.tag(p), tenant.as_str())
    }

    /// A node's lease as each partition sees it: a commit checks it in the same call.
    pub fn lease(&self, p: usize, epoch: &str) -> String {
        format!("{}lease:{epoch}", self.tag(p))
    }

    /// The node set: every node's epoch with the time its lease runs out.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The partition's shard channel: each change's sequence is published on it.
    pub fn channel(&self, p: usize) -> String {
        format!("{}changes", self.tag(p))
    }

    /// Announces subscription writes, so every node's dispatcher looks for work at once.
    pub fn subscriptions_channel(&self) -> String {
        format!("{}changed", self.subscriptions())
    }

    /// The subscriptions' tag prefix: every subscription key is this and a name.
    pub fn subscriptions(&self) -> String {
        format!("{}:{{s}}:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_partitions_are_stable() {
        let key = UserKey::new(TenantId::parse("12").unwrap(), UserId::parse("3abc").unwrap());
        assert_eq!(Keys::parse_member(Keys::member(&key).as_bytes()), Some(key.clone()));
        let keys = Keys::new("pd", 16).unwrap();
        assert_eq!(keys.partition_of(&key), keys.partition_of(&key.clone()));
        assert!(keys.user(&key).contains(&format!("{{p{}}}", keys.partition_of(&key))));
        assert!(Keys::new("a{b", 16).is_err() && Keys::new("pd", 0).is_err());
    }
}
