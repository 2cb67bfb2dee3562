//! The variance-prioritised buffer of VELR's online alignment.

use serde::{Deserialize, Serialize};

use crate::{
    base::{check_capacity, check_priority, Insertion, ReplayBuffer},
    error::Result,
};

/// Keeps the `capacity` highest-priority items offered so far and samples them with probability
/// proportional to priority.
///
/// VELR ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.3, appendix C) uses the ensemble's variance on a generated latent
/// as its priority: new samples replace the lowest-variance ones, and the reward model is
/// fine-tuned on draws weighted by variance, so it spends its updates where it is least sure.
/// A new item displaces the lowest-priority one only if its own priority is strictly higher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrioritisedBuffer<T> {
    capacity: usize,
    entries: Vec<(T, f64)>,
}

impl<T> PrioritisedBuffer<T> {
    /// An empty buffer.
    ///
    /// # Errors
    /// [`BufferError::ZeroCapacity`](crate::BufferError::ZeroCapacity) for `capacity == 0`.
    pub fn new(capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        Ok(Self {
            capacity,
            entries: Vec::new(),
        })
    }

    /// The lowest priority held (None when empty).
    pub fn min_priority(&self) -> Option<f64> {
        self.entries.iter().map(|e| e.1).min_by(f64::total_cmp)
    }
}

impl<T> ReplayBuffer<T> for PrioritisedBuffer<T> {
    fn push(&mut self, item: T, priority: f64) -> Result<Insertion<T>> {
        check_priority(priority)?;
        if self.entries.len() < self.capacity {
            self.entries.push((item, priority));
            return Ok(Insertion::Added);
        }
        let (lowest, min) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.1))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a full buffer is not empty");
        if priority > min {
            let old = std::mem::replace(&mut self.entries[lowest], (item, priority));
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
        self.entries.iter().map(|e| e.1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BufferError;

    #[test]
    fn replaces_the_lowest_only_when_higher() {
        let mut b = PrioritisedBuffer::new(2).unwrap();
        assert_eq!(b.push('a', 1.0).unwrap(), Insertion::Added);
        assert_eq!(b.push('b', 3.0).unwrap(), Insertion::Added);
        assert_eq!(b.push('c', 2.0).unwrap(), Insertion::Replaced('a'));
        // equal to the minimum: rejected
        assert_eq!(b.push('d', 2.0).unwrap(), Insertion::Rejected('d'));
        assert_eq!(b.min_priority(), Some(2.0));
        let mut kept: Vec<char> = b.entries().iter().map(|e| *e.0).collect();
        kept.sort();
        assert_eq!(kept, vec!['b', 'c']);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            PrioritisedBuffer::<u8>::new(0),
            Err(BufferError::ZeroCapacity)
        ));
        let mut b = PrioritisedBuffer::new(1).unwrap();
        assert!(matches!(
            b.push(1u8, f64::NAN),
            Err(BufferError::InvalidPriority(_))
        ));
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        assert!(matches!(b.sample(1, &mut rng), Err(BufferError::Empty)));
    }
}
