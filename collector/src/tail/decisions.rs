//! Decisions remembered for spans that arrive after their trace was decided.

use std::collections::{HashMap, VecDeque};

use datatracing_core::TraceId;
use datatracing_core::policy::Decision;

/// A bounded set of decided trace ids, oldest forgotten first.
pub(super) struct DecisionCache {
    map: HashMap<TraceId, Decision>,
    order: VecDeque<TraceId>,
    cap: usize,
}

impl DecisionCache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }
    pub(super) fn insert(&mut self, t: TraceId, d: Decision) {
        if self.map.insert(t, d).is_none() {
            self.order.push_back(t);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    pub(super) fn get(&self, t: &TraceId) -> Option<&Decision> {
        self.map.get(t)
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = (&TraceId, &Decision)> {
        self.map.iter()
    }
}
