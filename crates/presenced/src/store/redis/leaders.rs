//! Which node leads each partition's timers: rendezvous (highest-random-weight) hashing over
//! the epochs of the nodes whose leases are live. Every node computes the same answer from the
//! same node set, and when a node comes or goes only the partitions it led (or now leads) move.
//! The hash is spelled out here, not taken from the standard library, so that nodes built with
//! different compilers agree.

/// Whether `epoch` leads each of `partitions` partitions among the `live` epochs. A node not
/// (yet) among them leads nothing; with no live node at all, it leads everything.
pub fn led_by(epoch: &str, live: &[String], partitions: usize) -> Vec<bool> {
    if live.is_empty() {
        return vec![true; partitions];
    }
    (0..partitions)
        .map(|p| {
            live.iter()
                .max_by_key(|node| (weight(node, p), node.as_str()))
                .is_some_and(|leader| leader == epoch)
        })
        .collect()
}

/// A node's weight for a partition: CRC-32 of its epoch, mixed with the partition by SplitMix64.
fn weight(epoch: &str, p: usize) -> u64 {
    let mut z = (u64::from(crc32fast::hash(epoch.as_bytes())) << 32 | p as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}-{}", i * 7919)).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_leader_and_the_share_is_fair() {
        let live = epochs(4);
        let led: Vec<Vec<bool>> = live.iter().map(|e| led_by(e, &live, 1024)).collect();
        for p in 0..1024 {
            assert_eq!(led.iter().filter(|l| l[p]).count(), 1, "partition {p}");
        }
        for l in &led {
            let share = l.iter().filter(|x| **x).count();
            assert!((160..=352).contains(&share), "one node leads {share} of 1024");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_the_partitions_it_led() {
        let live = epochs(3);
        let before: Vec<Vec<bool>> = live.iter().map(|e| led_by(e, &live, 256)).collect();
        let survivors = &live[..2];
        for (i, epoch) in survivors.iter().enumerate() {
            let after = led_by(epoch, survivors, 256);
            for p in 0..256 {
                if before[i][p] {
                    assert!(after[p], "{epoch} lost partition {p} though it stayed");
                }
                if after[p] && !before[i][p] {
                    assert!(before[2][p], "partition {p} moved from a node that stayed");
                }
            }
        }
    }

    #[test]
    fn a_node_outside_the_live_set_leads_nothing_and_an_empty_set_leaves_all_to_each() {
        assert!(led_by("late", &epochs(2), 16).iter().all(|l| !l));
        assert!(led_by("alone", &[], 16).iter().all(|l| *l));
    }
}
