//! One log frame: the operations a batch makes on the tables, encoded compactly (a tag, then
//! lengths and bytes), and decoded with bounds checks (a frame passed its checksum, but a decoder
//! still never panics on bytes it did not write).
use super::*;

/// One change to one table: what a batch is made of, and what a log frame holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op<'a> {
    UserPut(&'a str, &'a [u8]),
    OutboxPut(u64, &'a [u8]),
    PruneOutbox(u64),
    SubscriptionPut(&'a str, &'a [u8]),
    SubscriptionDelete(&'a str),
    DeliveryPut(u64, &'a [u8]),
    DeliveryDelete(u64),
    ProgressPut(&'a str, u64),
    ProgressDelete(&'a str),
}

pub(super) fn batch_ops(batch: &Batch) -> Vec<Op<'_>> {
    let mut ops = Vec::with_capacity(batch.records.len() * 2 + batch.deliveries_put.len() + 4);
    for r in &batch.records {
        ops.push(Op::UserPut(&r.storage_key, &r.state_json));
        if let Some((id, json)) = &r.outbox {
            ops.push(Op::OutboxPut(*id, json));
        }
    }
    if batch.prune_outbox_below > 0 {
        ops.push(Op::PruneOutbox(batch.prune_outbox_below));
    }
    ops.extend(
        batch
            .subscriptions_put
            .iter()
            .map(|(id, json)| Op::SubscriptionPut(id, json)),
    );
    ops.extend(batch.subscriptions_delete.iter().map(|id| Op::SubscriptionDelete(id)));
    ops.extend(batch.deliveries_put.iter().map(|(id, json)| Op::DeliveryPut(*id, json)));
    ops.extend(batch.deliveries_delete.iter().map(|id| Op::DeliveryDelete(*id)));
    ops.extend(batch.progress_put.iter().map(|(id, at)| Op::ProgressPut(id, *at)));
    ops.extend(batch.progress_delete.iter().map(|id| Op::ProgressDelete(id)));
    ops
}

pub(super) fn encode_ops(ops: &[Op<'_>]) -> Vec<u8> {
    // Sized up front: a batch frame is tens of KB, and regrowing it copies every record again.
    let size: usize = ops
        .iter()
        .map(|op| match *op {
            Op::UserPut(k, v) | Op::SubscriptionPut(k, v) => 9 + k.len() + v.len(),
            Op::OutboxPut(_, v) | Op::DeliveryPut(_, v) => 13 + v.len(),
            Op::SubscriptionDelete(k) | Op::ProgressDelete(k) => 5 + k.len(),
            Op::ProgressPut(k, _) => 13 + k.len(),
            Op::PruneOutbox(_) | Op::DeliveryDelete(_) => 9,
        })
        .sum();
    let mut out = Vec::with_capacity(size);
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match *op {
            Op::UserPut(k, v) => {
                out.push(1);
                bytes(&mut out, k.as_bytes());
                bytes(&mut out, v);
            }
            Op::OutboxPut(id, v) => {
                out.push(2);
                out.extend_from_slice(&id.to_le_bytes());
                bytes(&mut out, v);
            }
            Op::PruneOutbox(below) => {
                out.push(3);
                out.extend_from_slice(&below.to_le_bytes());
            }
            Op::SubscriptionPut(k, v) => {
                out.push(4);
                bytes(&mut out, k.as_bytes());
                bytes(&mut out, v);
            }
            Op::SubscriptionDelete(k) => {
                out.push(5);
                bytes(&mut out, k.as_bytes());
            }
            Op::DeliveryPut(id, v) => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
                bytes(&mut out, v);
            }
            Op::DeliveryDelete(id) => {
                out.push(7);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Op::ProgressPut(k, at) => {
                out.push(8);
                bytes(&mut out, k.as_bytes());
                out.extend_from_slice(&at.to_le_bytes());
            }
            Op::ProgressDelete(k) => {
                out.push(9);
                bytes(&mut out, k.as_bytes());
            }
        }
    }
    out
}

/// The inverse of `encode_ops`, bounds-checked: a frame passed its checksum, but a decoder must
/// still never panic on bytes it did not write.
pub(super) fn decode_ops(frame: &[u8]) -> Result<Vec<Op<'_>>, String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("truncated operation".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u64(&mut self) -> Result<u64, String> {
            let b = self.take(8)?;
            Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        }
        fn bytes(&mut self) -> Result<&'a [u8], String> {
            let b = self.take(4)?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            self.take(n)
        }
        fn str(&mut self) -> Result<&'a str, String> {
            std::str::from_utf8(self.bytes()?).map_err(|_| "a key is not UTF-8".to_string())
        }
    }
    let mut r = Reader(frame);
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = r.0.split_first() {
        r.0 = rest;
        ops.push(match tag {
            1 => Op::UserPut(r.str()?, r.bytes()?),
            2 => Op::OutboxPut(r.u64()?, r.bytes()?),
            3 => Op::PruneOutbox(r.u64()?),
            4 => Op::SubscriptionPut(r.str()?, r.bytes()?),
            5 => Op::SubscriptionDelete(r.str()?),
            6 => Op::DeliveryPut(r.u64()?, r.bytes()?),
            7 => Op::DeliveryDelete(r.u64()?),
            8 => Op::ProgressPut(r.str()?, r.u64()?),
            9 => Op::ProgressDelete(r.str()?),
            other => return Err(format!("unknown operation {other}")),
        });
    }
    Ok(ops)
}
