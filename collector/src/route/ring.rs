//! The ring: which replica owns a trace id, by rendezvous (highest random weight) hashing.
//!
//! Each member scores every trace id with a hash of (member, trace id) and the highest
//! score owns the trace. When a member leaves, only the traces it owned move (each to its
//! runner-up); when one joins, it takes about `1/n` of the traces and no trace moves
//! between old members. That is the bounded movement routing needs: a membership change
//! splits as few traces as possible. No virtual nodes are needed for balance, because each
//! trace id is scored independently for each member.
//!
//! The hash is fixed here (FNV-1a for names, SplitMix64 for mixing) and must never change:
//! replicas of different versions must agree on every owner during a rolling upgrade.

use datatracing_core::TraceId;

/// SplitMix64's finaliser: a cheap, well-distributed 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over a member's name, then mixed.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

fn trace_hash(t: &TraceId) -> u64 {
    let b = t.as_bytes();
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&b[..8]);
    lo.copy_from_slice(&b[8..]);
    mix(u64::from_le_bytes(hi) ^ mix(u64::from_le_bytes(lo)))
}

/// The members (sorted, deduplicated) and which of them is this replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    members: Vec<(String, u64)>,
    me: Option<usize>,
}

impl Ring {
    /// A ring of `members` as seen by `me` (which may be absent: a replica that is
    /// leaving, or not yet ready, owns nothing).
    pub fn new(mut members: Vec<String>, me: &str) -> Self {
        members.sort();
        members.dedup();
        let me_idx = members.iter().position(|m| m == me);
        Self {
            members: members
                .into_iter()
                .map(|m| {
                    let h = name_hash(&m);
                    (m, h)
                })
                .collect(),
            me: me_idx,
        }
    }

    fn owner_index(&self, t: &TraceId) -> Option<usize> {
        let th = trace_hash(t);
        self.members
            .iter()
            .enumerate()
            .max_by_key(|(_, (name, h))| (mix(h ^ th), name.as_str()))
            .map(|(i, _)| i)
    }

    /// The owner's address; `None` for an empty ring.
    pub fn owner(&self, t: &TraceId) -> Option<&str> {
        self.owner_index(t).map(|i| self.members[i].0.as_str())
    }

    /// Whether this replica owns `t`. An empty ring makes every trace local (spans are
    /// never refused for want of an owner); a replica outside the ring (leaving, or not
    /// ready yet) owns nothing.
    pub fn owns(&self, t: &TraceId) -> bool {
        self.route(t).is_none()
    }

    /// Where `t` goes: `None` when this replica keeps it, else the owner's address.
    pub fn route(&self, t: &TraceId) -> Option<&str> {
        match self.owner_index(t) {
            Some(o) if self.me != Some(o) => Some(self.members[o].0.as_str()),
            _ => None,
        }
    }

    /// Like [`Ring::route`], as the index of the owner among [`Ring::members`].
    pub(crate) fn route_index(&self, t: &TraceId) -> Option<usize> {
        match self.owner_index(t) {
            Some(o) if self.me != Some(o) => Some(o),
            _ => None,
        }
    }

    /// The member at `index` (as [`Ring::route_index`] gives it).
    pub(crate) fn member(&self, index: usize) -> &str {
        &self.members[index].0
    }

    /// Member addresses, sorted.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(m, _)| m.as_str())
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(seed: u64, n: usize) -> Vec<TraceId> {
        (0..n as u64)
            .map(|i| {
                let a = mix(seed ^ mix(i)).to_le_bytes();
                let b = mix(a[0] as u64 ^ mix(i.wrapping_mul(31) ^ seed)).to_le_bytes();
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&a);
                bytes[8..].copy_from_slice(&b);
                TraceId::from_bytes(bytes)
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:4317", i / 250, i % 250 + 1))
            .collect()
    }

    #[test]
    fn every_replica_agrees_and_load_is_balanced() {
        let members = names(3);
        let rings: Vec<Ring> = members
            .iter()
            .map(|m| Ring::new(members.clone(), m))
            .collect();
        let mut counts = [0usize; 3];
        for t in ids(7, 30_000) {
            let owners: Vec<_> = rings.iter().map(|r| r.owner(&t)).collect();
            assert!(owners.windows(2).all(|w| w[0] == w[1]), "replicas disagree");
            assert_eq!(rings.iter().filter(|r| r.owns(&t)).count(), 1);
            let i = members
                .iter()
                .position(|m| Some(m.as_str()) == owners[0])
                .unwrap();
            counts[i] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "unbalanced: {counts:?}");
        }
        // Outside the ring (leaving) everything goes to the members; an empty ring keeps
        // everything local.
        let t = ids(1, 1)[0];
        let outside = Ring::new(members.clone(), "elsewhere:1");
        assert!(!outside.owns(&t));
        assert_eq!(outside.route(&t), rings[0].owner(&t));
        assert!(Ring::new(Vec::new(), "a:1").owns(&t));
        assert_eq!(Ring::new(Vec::new(), "a:1").route(&t), None);
    }

    proptest! {
        /// Adding or removing one member moves only the traces that member gains or
        /// loses, and about 1/n of them.
        #[test]
        fn one_membership_change_moves_about_one_nth(n in 1usize..12, seed in any::<u64>(), which in any::<usize>()) {
            let before = names(n);
            let keys = ids(seed, 4_000);
            // Join: a new member takes keys only from others, none move between old ones.
            let mut joined = before.clone();
            joined.push(format!("10.9.9.{}:4317", which % 200 + 1));
            let (a, b) = (Ring::new(before.clone(), ""), Ring::new(joined.clone(), ""));
            let new = joined.last().unwrap().as_str();
            let mut moved = 0usize;
            for t in &keys {
                let (o1, o2) = (a.owner(t).unwrap(), b.owner(t).unwrap());
                if o1 != o2 {
                    prop_assert_eq!(o2, new, "a key moved between old members");
                    moved += 1;
                }
            }
            let expect = keys.len() as f64 / (n + 1) as f64;
            let frac = moved as f64 / expect;
            prop_assert!((0.75..1.25).contains(&frac), "join moved {} keys, expected ~{}", moved, expect);
            // Leave: only the leaver's keys move.
            let gone = before[which % n].clone();
            let left: Vec<String> = before.iter().filter(|m| **m != gone).cloned().collect();
            let c = Ring::new(left, "");
            for t in &keys {
                let o1 = a.owner(t).unwrap();
                if o1 != gone {
                    prop_assert_eq!(Some(o1), c.owner(t), "a key of a staying member moved");
                }
            }
        }
    }
}
