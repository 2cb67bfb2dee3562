//! The [`ReplayBuffer`] trait shared by every buffer.

use rand::Rng;

use crate::error::{BufferError, Result};

/// What happened to a pushed item.
#[derive(Debug, Clone, PartialEq)]
pub enum Insertion<T> {
    /// Stored in a free slot.
    Added,
    /// Stored in place of this evicted item.
    Replaced(T),
    /// Not stored (the item itself is returned).
    Rejected(T),
}

impl<T> Insertion<T> {
    /// Whether the pushed item was not stored.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }
}

/// A bounded collection of training items that a trainer refills and samples from.
pub trait ReplayBuffer<T> {
    /// Offers an item with its priority (ignored by buffers that sample uniformly, but kept).
    ///
    /// # Errors
    /// [`BufferError::InvalidPriority`] for a negative, NaN or infinite priority.
    fn push(&mut self, item: T, priority: f64) -> Result<Insertion<T>>;
    /// Items held, with their priorities, in the buffer's own order.
    fn entries(&self) -> Vec<(&T, f64)>;
    /// Number of items held.
    fn len(&self) -> usize;
    /// Largest number of items held.
    fn capacity(&self) -> usize;
    /// Sampling weight of each entry of [`entries`](Self::entries), same order.
    fn weights(&self) -> Vec<f64>;

    /// Checks the invariants a loaded buffer must satisfy: capacity >= 1, length within it,
    /// valid priorities. Returns what is wrong.
    fn check(&self) -> std::result::Result<(), String> {
        check_entries(self)
    }

    /// Whether the buffer holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Draws `n` items with replacement, each with probability proportional to its
    /// [`weights`](Self::weights); if every weight is zero, uniformly.
    ///
    /// # Errors
    /// [`BufferError::Empty`] when the buffer is empty.
    fn sample<R: Rng>(&self, n: usize, rng: &mut R) -> Result<Vec<&T>> {
        let entries = self.entries();
        if entries.is_empty() {
            return Err(BufferError::Empty);
        }
        let idx = weighted_indices(&self.weights(), n, rng);
        Ok(idx.into_iter().map(|i| entries[i].0).collect())
    }
}

/// Draws `n` indices with replacement, proportional to `weights` (uniform if they sum to 0).
pub(crate) fn weighted_indices<R: Rng>(weights: &[f64], n: usize, rng: &mut R) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0.0;
    for w in weights {
        total += w;
        cumulative.push(total);
    }
    (0..n)
        .map(|_| {
            if total <= 0.0 {
                return rng.random_range(0..weights.len());
            }
            let u = rng.random::<f64>() * total;
            // first index whose cumulative weight exceeds u; never one of weight 0
            cumulative
                .partition_point(|&c| c <= u)
                .min(weights.len() - 1)
        })
        .collect()
}

/// The invariants every buffer shares: capacity >= 1, length within it, valid priorities.
pub(crate) fn check_entries<T, Buf: ReplayBuffer<T> + ?Sized>(
    buf: &Buf,
) -> std::result::Result<(), String> {
    if buf.capacity() == 0 {
        return Err("capacity 0".into());
    }
    if buf.len() > buf.capacity() {
        return Err(format!(
            "{} items exceed capacity {}",
            buf.len(),
            buf.capacity()
        ));
    }
    match buf
        .entries()
        .iter()
        .find(|(_, p)| check_priority(*p).is_err())
    {
        Some((_, p)) => Err(format!("invalid priority {p}")),
        None => Ok(()),
    }
}

pub(crate) fn check_capacity(capacity: usize) -> Result<()> {
    if capacity == 0 {
        Err(BufferError::ZeroCapacity)
    } else {
        Ok(())
    }
}

pub(crate) fn check_priority(p: f64) -> Result<()> {
    if p.is_finite() && p >= 0.0 {
        Ok(())
    } else {
        Err(BufferError::InvalidPriority(p))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn zero_weights_are_never_drawn() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let idx = weighted_indices(&[0.0, 1.0, 0.0, 3.0], 1000, &mut rng);
        assert!(idx.iter().all(|&i| i == 1 || i == 3));
        let threes = idx.iter().filter(|&&i| i == 3).count();
        assert!((650..850).contains(&threes), "{threes}");
    }

    #[test]
    fn all_zero_weights_draw_uniformly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let idx = weighted_indices(&[0.0, 0.0], 1000, &mut rng);
        let ones = idx.iter().filter(|&&i| i == 1).count();
        assert!((400..600).contains(&ones));
    }

    #[test]
    fn priorities_are_checked() {
        assert!(check_priority(0.0).is_ok());
        assert!(matches!(
            check_priority(-1.0),
            Err(BufferError::InvalidPriority(_))
        ));
        assert!(check_priority(f64::NAN).is_err());
        assert!(check_priority(f64::INFINITY).is_err());
    }
}
