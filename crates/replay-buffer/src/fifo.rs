//! First-in, first-out buffer.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{
    base::{check_capacity, check_priority, Insertion, ReplayBuffer},
    error::Result,
};

/// Keeps the `capacity` most recent items; [`entries`](ReplayBuffer::entries) runs from the
/// oldest to the newest. Samples uniformly; priorities are stored but do not weigh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FifoBuffer<T> {
    capacity: usize,
    entries: VecDeque<(T, f64)>,
}

impl<T> FifoBuffer<T> {
    /// An empty buffer.
    ///
    /// # Errors
    /// [`BufferError::ZeroCapacity`](crate::BufferError::ZeroCapacity) for `capacity == 0`.
    pub fn new(capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        Ok(Self {
            capacity,
            entries: VecDeque::new(),
        })
    }
}

impl<T> ReplayBuffer<T> for FifoBuffer<T> {
    fn push(&mut self, item: T, priority: f64) -> Result<Insertion<T>> {
        check_priority(priority)?;
        let evicted = (self.entries.len() == self.capacity)
            .then(|| self.entries.pop_front())
            .flatten();
        self.entries.push_back((item, priority));
        Ok(match evicted {
            Some((old, _)) => Insertion::Replaced(old),
            None => Insertion::Added,
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest() {
        let mut b = FifoBuffer::new(2).unwrap();
        assert_eq!(b.push(1, 0.0).unwrap(), Insertion::Added);
        assert_eq!(b.push(2, 9.0).unwrap(), Insertion::Added);
        assert_eq!(b.push(3, 0.0).unwrap(), Insertion::Replaced(1));
        let order: Vec<i32> = b.entries().iter().map(|e| *e.0).collect();
        assert_eq!(order, vec![2, 3]);
    }
}
