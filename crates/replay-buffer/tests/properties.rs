//! Property tests of the buffers' invariants.

use proptest::prelude::*;
use rand::SeedableRng;
use replay_buffer::*;

fn priorities() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..100.0, 0..200)
}

proptest! {
    #[test]
    fn never_exceeds_capacity(cap in 1usize..40, ps in priorities(), seed in any::<u64>()) {
        let mut p = PrioritisedBuffer::new(cap).unwrap();
        let mut f = FifoBuffer::new(cap).unwrap();
        let mut r = ReservoirBuffer::new(cap, seed).unwrap();
        for (i, &pr) in ps.iter().enumerate() {
            p.push(i, pr).unwrap();
            f.push(i, pr).unwrap();
            r.push(i, pr).unwrap();
            let want = (i + 1).min(cap);
            prop_assert_eq!(p.len(), want);
            prop_assert_eq!(f.len(), want);
            prop_assert_eq!(r.len(), want);
        }
    }

    #[test]
    fn prioritised_keeps_the_top_priorities(cap in 1usize..40, ps in priorities()) {
        let mut b = PrioritisedBuffer::new(cap).unwrap();
        for (i, &pr) in ps.iter().enumerate() {
            b.push(i, pr).unwrap();
        }
        let mut kept: Vec<f64> = b.entries().iter().map(|e| e.1).collect();
        kept.sort_by(|a, b| b.total_cmp(a));
        let mut top = ps.clone();
        top.sort_by(|a, b| b.total_cmp(a));
        top.truncate(cap);
        prop_assert_eq!(kept, top);
        // and every kept item carries the priority it was pushed with
        for (i, p) in b.entries() {
            prop_assert_eq!(ps[*i], p);
        }
    }

    #[test]
    fn fifo_keeps_the_newest_in_order(cap in 1usize..40, n in 0usize..200) {
        let mut b = FifoBuffer::new(cap).unwrap();
        for i in 0..n {
            b.push(i, 1.0).unwrap();
        }
        let order: Vec<usize> = b.entries().iter().map(|e| *e.0).collect();
        let want: Vec<usize> = (n.saturating_sub(cap)..n).collect();
        prop_assert_eq!(order, want);
    }

    #[test]
    fn save_load_round_trip(cap in 1usize..20, ps in priorities(), seed in any::<u64>()) {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("rb_prop_{}_{seed}.json", std::process::id()));
        let mut r = ReservoirBuffer::new(cap, seed).unwrap();
        let mut p = PrioritisedBuffer::new(cap).unwrap();
        for (i, &pr) in ps.iter().enumerate() {
            r.push(i as u32, pr).unwrap();
            p.push(i as u32, pr).unwrap();
        }
        save(&r, &path).unwrap();
        let mut back: ReservoirBuffer<u32> = load(&path).unwrap();
        prop_assert_eq!(&back, &r);
        // the reloaded reservoir makes the same choices as the original
        back.push(7, 1.0).unwrap();
        r.push(7, 1.0).unwrap();
        prop_assert_eq!(&back, &r);
        save(&p, &path).unwrap();
        prop_assert_eq!(load::<u32, PrioritisedBuffer<u32>>(&path).unwrap(), p);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn sampling_frequencies_follow_priorities() {
    let ps = [1.0, 2.0, 3.0, 4.0, 0.0, 10.0];
    let mut b = PrioritisedBuffer::new(ps.len()).unwrap();
    for (i, &p) in ps.iter().enumerate() {
        b.push(i, p).unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let n = 200_000;
    let mut counts = [0usize; 6];
    for i in b.sample(n, &mut rng).unwrap() {
        counts[*i] += 1;
    }
    let total: f64 = ps.iter().sum();
    for (i, &p) in ps.iter().enumerate() {
        let freq = counts[i] as f64 / n as f64;
        // binomial standard deviation <= 0.0012 here; 5 sd
        assert!(
            (freq - p / total).abs() < 6e-3,
            "item {i}: {freq} vs {}",
            p / total
        );
    }
    assert_eq!(counts[4], 0, "a zero-priority item is never drawn");
}

#[test]
fn fifo_and_reservoir_sample_uniformly() {
    let mut b = FifoBuffer::new(4).unwrap();
    for (i, p) in [0.0, 100.0, 1.0, 5.0].iter().enumerate() {
        b.push(i, *p).unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut counts = [0usize; 4];
    for i in b.sample(40_000, &mut rng).unwrap() {
        counts[*i] += 1;
    }
    assert!(
        counts.iter().all(|&c| (9_400..10_600).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn corrupt_files_are_typed_errors() {
    let path = std::env::temp_dir().join(format!("rb_bad_{}.json", std::process::id()));
    std::fs::write(&path, br#"{"capacity":1,"entries":[[1,0.5],[2,0.5]]}"#).unwrap();
    let err = load::<u32, PrioritisedBuffer<u32>>(&path).unwrap_err();
    assert!(err.to_string().contains("exceed capacity"), "{err}");
    std::fs::write(&path, br#"{"capacity":1,"entries":[[1,-0.5]]}"#).unwrap();
    let err = load::<u32, PrioritisedBuffer<u32>>(&path).unwrap_err();
    assert!(err.to_string().contains("invalid priority"), "{err}");
    std::fs::write(&path, b"not json").unwrap();
    assert!(matches!(
        load::<u32, FifoBuffer<u32>>(&path),
        Err(BufferError::Corrupt { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        load::<u32, FifoBuffer<u32>>(&path),
        Err(BufferError::Io { .. })
    ));
}
