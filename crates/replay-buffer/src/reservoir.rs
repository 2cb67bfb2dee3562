//! Reservoir sampling buffer.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{
    base::{check_capacity, check_priority, Insertion, ReplayBuffer},
    error::Result,
};

/// A uniform random subset of every item ever pushed (Vitter's algorithm R): the `n`-th item
/// (1-based) is kept with probability `capacity / n`, in place of a uniformly chosen one.
/// Samples uniformly.
///
/// Its randomness is a function of `(seed, n)`, so the buffer is deterministic and a saved buffer
/// resumes exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservoirBuffer<T> {
    capacity: usize,
    entries: Vec<(T, f64)>,
    seen: u64,
    seed: u64,
}

impl<T> ReservoirBuffer<T> {
    /// An empty buffer whose replacement choices derive from `seed`.
    ///
    /// # Errors
    /// [`BufferError::ZeroCapacity`](crate::BufferError::ZeroCapacity) for `capacity == 0`.
    pub fn new(capacity: usize, seed: u64) -> Result<Self> {
        check_capacity(capacity)?;
        Ok(Self {
            capacity,
            entries: Vec::new(),
            seen: 0,
            seed,
        })
    }

    /// Items offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

impl<T> ReplayBuffer<T> for ReservoirBuffer<T> {
    fn push(&mut self, item: T, priority: f64) -> Result<Insertion<T>> {
        check_priority(priority)?;
        self.seen += 1;
        if self.entries.len() < self.capacity {
            self.entries.push((item, priority));
            return Ok(Insertion::Added);
        }
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ self.seen.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let j = rng.random_range(0..self.seen) as usize;
        if j < self.capacity {
            let old = std::mem::replace(&mut self.entries[j], (item, priority));
            Ok(Insertion::Replaced(old.0))
        } else {
            Ok(Insertion::Rejected(item))
        }
    }

    fn entries(&self) -> Vec<(&T, f64)> {
        self.entries.iter().map(|(t, p)| (t, *p)).collect()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn weights(&self) -> Vec<f64> {
        vec![1.0; self.entries.len()]
    }

    fn check(&self) -> std::result::Result<(), String> {
        if (self.entries.len() as u64) > self.seen {
            return Err(format!(
                "{} items but only {} seen",
                self.entries.len(),
                self.seen
            ));
        }
        crate::base::check_entries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_uniform_subset() {
        // each of 20 items should end up kept with probability 5/20
        let mut kept = [0usize; 20];
        for seed in 0..2000 {
            let mut b = ReservoirBuffer::new(5, seed).unwrap();
            for i in 0..20 {
                b.push(i, 1.0).unwrap();
            }
            assert_eq!(b.len(), 5);
            for (i, _) in b.entries() {
                kept[*i] += 1;
            }
        }
        // expected 500 each; binomial sd ~19
        assert!(kept.iter().all(|&k| (420..580).contains(&k)), "{kept:?}");
    }
}
