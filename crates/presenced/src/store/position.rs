//! Where a change sits in the change log: opaque to everyone but the backend that made it.
//!
//! A position is a *cut*: for each partition of the log, the last change included. The embedded
//! backend has one partition (one sequence, a total order); the Redis backend has one sequence
//! per partition, so two positions may be incomparable, and consumers only use the lattice
//! operations below: `<=` ("everything in this one is in that one"), [`join`](Position::join),
//! [`meet`](Position::meet) and [`before`](Position::before). A change's own position is the cut
//! holding it alone (its partition's sequence, zero elsewhere), so `change.position <= cut` says
//! whether the cut includes the change.
//!
//! Text forms, versioned so an old token is recognised, never misread:
//! - `1.<digits>`: one sequence (e.g. `1.4711`);
//! - `2.<base64url>`: the partition count and each partition's sequence as LEB128 varints, e.g.
//!   16 partitions with sequences below two million are 49 bytes, 66 characters.
use base64::Engine;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A place in the change log. `Position::ZERO` is "before every change" in every form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Position(Form);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Form {
    Sequence(u64),
    /// One sequence per partition; never all zero (that is `Sequence(0)`, so `ZERO` is one value).
    Partitioned(Arc<[u64]>),
}

impl Default for Form {
    fn default() -> Self {
        Form::Sequence(0)
    }
}

/// Most partitions a position may hold (a bound on what a token can make the server allocate).
pub const MAX_PARTITIONS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("not a change-log position (expected `1.<digits>` or `2.<base64url>`)")]
    Malformed,
    #[error("a change-log position of another form (version {0}); this server reads versions 1 and 2")]
    OtherVersion(String),
}

impl Position {
    pub const ZERO: Position = Position(Form::Sequence(0));

    /// For backends with one sequence for the whole log (the embedded one).
    pub fn from_sequence(sequence: u64) -> Self {
        Position(Form::Sequence(sequence))
    }

    /// A cut over `sequences.len()` partitions.
    pub fn from_partitions(sequences: &[u64]) -> Self {
        if sequences.iter().all(|&s| s == 0) {
            return Position::ZERO;
        }
        Position(Form::Partitioned(sequences.into()))
    }

    /// The position of one change: sequence `sequence` of partition `partition` of `count`.
    pub fn of_change(partition: usize, count: usize, sequence: u64) -> Self {
        let mut parts = vec![0; count];
        parts[partition] = sequence;
        Position::from_partitions(&parts)
    }

    /// The single sequence behind a one-sequence position (0 for another form); only the backend
    /// that made it reads it.
    pub fn sequence(&self) -> u64 {
        match &self.0 {
            Form::Sequence(s) => *s,
            Form::Partitioned(_) => 0,
        }
    }

    /// Whether this is a one-sequence position (as the embedded backend writes).
    pub fn is_sequence(&self) -> bool {
        matches!(self.0, Form::Sequence(_))
    }

    /// Each partition's sequence, over `count` partitions; `None` if this position is of another
    /// shape (a one-sequence position other than zero, or another partition count).
    pub fn partitions(&self, count: usize) -> Option<Vec<u64>> {
        match &self.0 {
            Form::Sequence(0) => Some(vec![0; count]),
            Form::Sequence(_) => None,
            Form::Partitioned(p) if p.len() == count => Some(p.to_vec()),
            Form::Partitioned(_) => None,
        }
    }

    /// Whether every change `other` holds, this one holds too (`other <= self`).
    pub fn includes(&self, other: &Position) -> bool {
        other <= self
    }

    /// The position holding every change either holds.
    pub fn join(&self, other: &Position) -> Position {
        self.combine(other, u64::max)
    }

    /// The position holding the changes both hold.
    pub fn meet(&self, other: &Position) -> Position {
        self.combine(other, u64::min)
    }

    fn combine(&self, other: &Position, f: fn(u64, u64) -> u64) -> Position {
        match (&self.0, &other.0) {
            (Form::Sequence(a), Form::Sequence(b)) => Position::from_sequence(f(*a, *b)),
            (Form::Partitioned(a), Form::Partitioned(b)) if a.len() == b.len() => {
                let parts: Vec<u64> = a.iter().zip(b.iter()).map(|(x, y)| f(*x, *y)).collect();
                Position::from_partitions(&parts)
            }
            (Form::Sequence(0), Form::Partitioned(p)) | (Form::Partitioned(p), Form::Sequence(0)) => {
                let parts: Vec<u64> = p.iter().map(|x| f(0, *x)).collect();
                Position::from_partitions(&parts)
            }
            // Positions of two forms never meet in one store; keep the receiver.
            _ => self.clone(),
        }
    }

    /// `self` with the change at `change` and everything after it in its partition taken out:
    /// what a consumer has finished when `change` is the oldest it still holds. `change` may
    /// hold one change per partition (an [`earliest`](Self::earliest) fold); zero holds none.
    pub fn before(&self, change: &Position) -> Position {
        match (&self.0, &change.0) {
            (_, Form::Sequence(0)) => self.clone(),
            (Form::Sequence(a), Form::Sequence(c)) => Position::from_sequence((*a).min(c - 1)),
            (Form::Partitioned(a), Form::Partitioned(c)) if a.len() == c.len() => {
                let parts: Vec<u64> = a
                    .iter()
                    .zip(c.iter())
                    .map(|(x, y)| if *y == 0 { *x } else { (*x).min(y - 1) })
                    .collect();
                Position::from_partitions(&parts)
            }
            _ => self.clone(),
        }
    }

    /// The earliest change of each partition among `self` and `change` (zero meaning none yet):
    /// folded over held changes, it is what [`before`](Self::before) needs to know.
    pub fn earliest(&self, change: &Position) -> Position {
        let pick = |x: u64, y: u64| match (x, y) {
            (0, y) => y,
            (x, 0) => x,
            (x, y) => x.min(y),
        };
        match (&self.0, &change.0) {
            (Form::Sequence(0), _) => change.clone(),
            (_, Form::Sequence(0)) => self.clone(),
            _ => self.combine(change, pick),
        }
    }

    /// Whether every partition of this position is past zero (no earlier change can be missing
    /// from an [`earliest`](Self::earliest) fold).
    pub fn is_full(&self) -> bool {
        match &self.0 {
            Form::Sequence(s) => *s > 0,
            Form::Partitioned(p) => p.iter().all(|&s| s > 0),
        }
    }

    /// A key that orders the changes of one partition as the log does (and those of different
    /// partitions in some fixed way): for picking "the oldest" among queues.
    pub fn order_key(&self) -> u64 {
        match &self.0 {
            Form::Sequence(s) => *s,
            Form::Partitioned(p) => p.iter().copied().max().unwrap_or(0),
        }
    }

    /// The versioned text form: what tokens and cursors carry.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    pub fn parse(text: &str) -> Result<Self, PositionError> {
        let (version, rest) = text.split_once('.').ok_or(PositionError::Malformed)?;
        match version {
            "1" => {
                if rest.is_empty() || rest.len() > 20 || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PositionError::Malformed);
                }
                rest.parse()
                    .map(Position::from_sequence)
                    .map_err(|_| PositionError::Malformed)
            }
            "2" => parse_partitioned(rest).ok_or(PositionError::Malformed),
            v if !v.is_empty() && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()) => {
                Err(PositionError::OtherVersion(v.to_owned()))
            }
            _ => Err(PositionError::Malformed),
        }
    }
}

fn parse_partitioned(text: &str) -> Option<Position> {
    if text.len() > 4 * MAX_PARTITIONS * 10 / 3 + 8 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    let mut input = bytes.as_slice();
    let count = usize::try_from(read_varint(&mut input)?).ok()?;
    if count == 0 || count > MAX_PARTITIONS {
        return None;
    }
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        parts.push(read_varint(&mut input)?);
    }
    if !input.is_empty() {
        return None;
    }
    Some(Position::from_partitions(&parts))
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl PartialOrd for Position {
    /// The partial order of cuts: `a <= b` when every change `a` holds, `b` holds too.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (a, b): (&[u64], &[u64]) = match (&self.0, &other.0) {
            (Form::Sequence(a), Form::Sequence(b)) => return Some(a.cmp(b)),
            (Form::Partitioned(a), Form::Partitioned(b)) if a.len() == b.len() => (a, b),
            (Form::Sequence(0), Form::Partitioned(_)) => return Some(Ordering::Less),
            (Form::Partitioned(_), Form::Sequence(0)) => return Some(Ordering::Greater),
            _ => return None,
        };
        let (mut less, mut greater) = (false, false);
        for (x, y) in a.iter().zip(b.iter()) {
            match x.cmp(y) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (true, true) => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Form::Sequence(s) => write!(f, "1.{s}"),
            Form::Partitioned(parts) => {
                let mut bytes = Vec::with_capacity(1 + parts.len() * 3);
                write_varint(&mut bytes, parts.len() as u64);
                for p in parts.iter() {
                    write_varint(&mut bytes, *p);
                }
                write!(
                    f,
                    "2.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_refuses_what_it_did_not_write() {
        for n in [0, 1, 42, u64::MAX] {
            let p = Position::from_sequence(n);
            assert_eq!(Position::parse(&p.to_text()), Ok(p));
        }
        assert_eq!(Position::from_sequence(7).to_text(), "1.7");
        assert_eq!(Position::parse("3.7"), Err(PositionError::OtherVersion("3".into())));
        for bad in [
            "",
            "1",
            "1.",
            "1.x",
            "x.1",
            "1.-1",
            "1.99999999999999999999",
            ".1",
            "1.1.1",
            "2.",
            "2.AA",
            "2.!!",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Position::from_sequence(2) > Position::from_sequence(1));
    }

    #[test]
    fn partitioned_positions_round_trip_and_stay_small() {
        let parts: Vec<u64> = (0..16).map(|i| 1_000_000 + i).collect();
        let p = Position::from_partitions(&parts);
        let text = p.to_text();
        assert!(text.starts_with("2."));
        assert_eq!(text.len(), 2 + 66, "{text}");
        assert_eq!(Position::parse(&text), Ok(p.clone()));
        assert_eq!(p.partitions(16), Some(parts));
        assert_eq!(p.partitions(8), None);
        let max = Position::from_partitions(&[u64::MAX, 0, 1]);
        assert_eq!(Position::parse(&max.to_text()), Ok(max));
        assert_eq!(Position::from_partitions(&[0, 0]), Position::ZERO);
    }

    #[test]
    fn cuts_are_a_lattice() {
        let a = Position::from_partitions(&[3, 1]);
        let b = Position::from_partitions(&[1, 3]);
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!(a.join(&b), Position::from_partitions(&[3, 3]));
        assert_eq!(a.meet(&b), Position::from_partitions(&[1, 1]));
        assert!(Position::ZERO <= a && a <= a.join(&b));
        let change = Position::of_change(1, 2, 2);
        assert!(change <= b && !a.includes(&change));
        assert_eq!(b.before(&change), Position::from_partitions(&[1, 1]));
        assert_eq!(Position::ZERO.join(&change), change);
        let seq = Position::from_sequence(9);
        assert_eq!(seq.before(&Position::from_sequence(4)), Position::from_sequence(3));
        assert_eq!(seq.partial_cmp(&a), None, "forms never compare");
        let held = Position::ZERO
            .earliest(&Position::of_change(0, 2, 5))
            .earliest(&Position::of_change(0, 2, 7))
            .earliest(&Position::of_change(1, 2, 4));
        assert_eq!(held, Position::from_partitions(&[5, 4]));
        assert_eq!(
            Position::from_partitions(&[9, 9]).before(&held),
            Position::from_partitions(&[4, 3])
        );
    }
}
