//! The live path: every commit is announced on its partition's channel (a shard channel,
//! `SPUBLISH`, on a Cluster; a plain one on a standalone server, whose client cannot yet
//! `SSUBSCRIBE`). A node subscribed to all partitions moves its head and wakes its sweeper as
//! soon as another node commits. Subscription writes are announced on the subscriptions' channel,
//! so every node's dispatcher looks at once for work it now leads. A channel whose slot moves to
//! another master (resharding) is followed there. Pub/Sub is at most once (a reconnect, a failover
//! or a slot move drops what was published meanwhile), so the head poll stays, slower, to fill
//! such gaps.
use super::connection::{Target, Timeouts};
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use std::collections::HashMap;

/// What one commit announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub partition: usize,
    /// The change's sequence in its partition; 0 when the commit recorded no change.
    pub seq: u64,
    /// The user's next deadline (µs since the epoch), if the commit left one.
    pub deadline_us: Option<i64>,
}

/// What a node hears on the channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Commit(Announcement),
    /// A subscription was created, changed or removed.
    Subscriptions,
}

/// The channels a node listens on.
pub struct Channels {
    /// Partition n's channel at index n.
    pub partitions: Vec<String>,
    pub subscriptions: String,
}

/// A commit's payload is `<seq> <deadline_us>` (the deadline may be empty).
pub fn parse(info: &PushInfo, partitions: &HashMap<Vec<u8>, usize>, subscriptions: &[u8]) -> Option<Heard> {
    if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
        return None;
    }
    let [Value::BulkString(channel), Value::BulkString(payload)] = info.data.as_slice() else {
        return None;
    };
    if channel == subscriptions {
        return Some(Heard::Subscriptions);
    }
    let partition = *partitions.get(channel)?;
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, deadline) = text.split_once(' ').unwrap_or((text, ""));
    Some(Heard::Commit(Announcement {
        partition,
        seq: seq.parse().ok()?,
        deadline_us: deadline.parse().ok(),
    }))
}

/// A subscription to every partition's channel, on a connection of its own; it resubscribes by
/// itself after a reconnect and, on a Cluster, when a channel's slot moves to another master.
/// It ends when dropped.
pub struct Subscriber {
    _connection: Box<dyn std::any::Any + Send>,
    following: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = &self.following {
            task.abort();
        }
    }
}

/// Subscribe to `channels`; `on` is called on the connection's reader for each message, so it
/// must not block.
pub async fn subscribe(
    target: &Target,
    timeouts: Timeouts,
    channels: &Channels,
    on: impl Fn(Heard) + Send + Sync + 'static,
) -> redis::RedisResult<Subscriber> {
    let partitions: HashMap<Vec<u8>, usize> = channels
        .partitions
        .iter()
        .enumerate()
        .map(|(p, c)| (c.as_bytes().to_vec(), p))
        .collect();
    let subscriptions = channels.subscriptions.as_bytes().to_vec();
    // A Cluster master tells its shard-channel subscribers `sunsubscribe` when the channel's slot
    // moves away (resharding); the client library does not follow the slot by itself.
    let (moved, mut to_follow) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
        if info.kind == PushKind::SUnsubscribe {
            if let Some(Value::BulkString(channel)) = info.data.first() {
                if partitions.contains_key(channel) || *channel == subscriptions {
                    let _ = moved.send(channel.clone());
                }
            }
        } else if let Some(heard) = parse(&info, &partitions, &subscriptions) {
            on(heard);
        }
        Ok(())
    };
    let all: Vec<&String> = channels.partitions.iter().chain([&channels.subscriptions]).collect();
    let connecting = async {
        if target.cluster {
            let client = ClusterClientBuilder::new(target.urls.clone())
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(sender)
                .connection_timeout(timeouts.connect)
                .response_timeout(timeouts.command)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            // One channel a call: each lives in its own slot.
            for channel in all {
                conn.ssubscribe(channel).await?;
            }
            let mut again = conn.clone();
            let following = tokio::spawn(async move {
                while let Some(channel) = to_follow.recv().await {
                    // Sent by the stale slot map, the first try meets MOVED, which refreshes it.
                    while let Err(e) = again.ssubscribe(&channel).await {
                        tracing::warn!(error = %e, "cannot follow a moved partition channel yet; retrying");
                        tokio::time::sleep(timeouts.command).await;
                    }
                }
            });
            Ok(Subscriber {
                _connection: Box::new(conn),
                following: Some(following),
            })
        } else {
            let info = target.urls[0].as_str().into_connection_info()?;
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.command))
                .set_push_sender(sender)
                .set_automatic_resubscription();
            let mut conn = client.get_connection_manager_with_config(config).await?;
            conn.subscribe(all).await?;
            Ok(Subscriber {
                _connection: Box::new(conn),
                following: None,
            })
        }
    };
    tokio::time::timeout(timeouts.connect * 3, connecting)
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out subscribing to the partitions' channels",
            ))
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: PushKind, channel: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn announcements_parse_and_strangers_are_ignored() {
        let partitions = HashMap::from([(b"pd:{p0}:changes".to_vec(), 0), (b"pd:{p1}:changes".to_vec(), 1)]);
        let subs = b"pd:{s}:changed";
        let heard = |kind, channel, payload| parse(&message(kind, channel, payload), &partitions, subs);
        assert_eq!(
            heard(PushKind::SMessage, "pd:{p1}:changes", "42 1700000000000000"),
            Some(Heard::Commit(Announcement {
                partition: 1,
                seq: 42,
                deadline_us: Some(1_700_000_000_000_000)
            }))
        );
        assert_eq!(
            heard(PushKind::Message, "pd:{p0}:changes", "7 "),
            Some(Heard::Commit(Announcement {
                partition: 0,
                seq: 7,
                deadline_us: None
            }))
        );
        assert_eq!(
            heard(PushKind::SMessage, "pd:{s}:changed", "1"),
            Some(Heard::Subscriptions)
        );
        assert_eq!(heard(PushKind::Message, "other", "7 "), None);
        assert_eq!(heard(PushKind::Message, "pd:{p0}:changes", "x"), None);
        assert_eq!(heard(PushKind::Subscribe, "pd:{p0}:changes", "1"), None);
    }
}
