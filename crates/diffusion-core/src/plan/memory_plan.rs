use std::fmt;

/// Whether a term lives for the whole run or only during the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermKind {
    /// Allocated before the step and kept after it (weights, optimiser state).
    Resident,
    /// Allocated by the step and freed after it (activations, gradients, working sets).
    Step,
}

/// One named share of the peak.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryTerm {
    /// What the bytes hold, e.g. `"policy: saved activations"`.
    pub name: String,
    /// Bytes at the step's peak.
    pub bytes: f64,
    /// Resident or step memory.
    pub kind: TermKind,
    /// How the figure is made up (counts, shapes).
    pub detail: String,
}

/// A predicted peak memory, term by term.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryPlan {
    /// The terms, in the order they were added.
    pub terms: Vec<MemoryTerm>,
    /// When in the step the peak falls (empty: not stated).
    pub moment: String,
}

impl MemoryPlan {
    /// Adds a term (terms of zero bytes are left out).
    pub fn push(&mut self, name: impl Into<String>, bytes: f64, kind: TermKind, detail: String) {
        if bytes > 0.0 {
            self.terms.push(MemoryTerm {
                name: name.into(),
                bytes,
                kind,
                detail,
            });
        }
    }

    /// Appends another plan's terms, their names prefixed with `prefix` (`"policy"` ...).
    pub fn extend(&mut self, prefix: &str, other: MemoryPlan) {
        for mut t in other.terms {
            t.name = format!("{prefix}: {}", t.name);
            self.terms.push(t);
        }
    }

    /// Bytes of the terms of one kind.
    pub fn bytes(&self, kind: TermKind) -> f64 {
        self.terms
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.bytes)
            .sum()
    }

    /// The predicted peak: resident plus step memory.
    pub fn total(&self) -> f64 {
        self.terms.iter().map(|t| t.bytes).sum()
    }
}

/// A Markdown table: term, size (GiB, or MiB below 1 GiB), share of the total, detail; then
/// the total.
impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let (unit, scale) = if total < (1u64 << 30) as f64 {
            ("MiB", (1u64 << 20) as f64)
        } else {
            ("GiB", (1u64 << 30) as f64)
        };
        if !self.moment.is_empty() {
            writeln!(f, "peak: {}\n", self.moment)?;
        }
        writeln!(f, "| term | {unit} | share | detail |\n|---|---|---|---|")?;
        for t in &self.terms {
            writeln!(
                f,
                "| {} | {:.2} | {:.0}% | {} |",
                t.name,
                t.bytes / scale,
                100.0 * t.bytes / total,
                t.detail
            )?;
        }
        write!(
            f,
            "| **total** | **{:.2}** | | resident {:.2} {unit} + step {:.2} {unit} |",
            total / scale,
            self.bytes(TermKind::Resident) / scale,
            self.bytes(TermKind::Step) / scale
        )
    }
}

/// Bytes in GiB.
pub fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_by_kind_and_prefixes() {
        let mut a = MemoryPlan::default();
        a.push("weights", 3.0, TermKind::Resident, String::new());
        a.push("nothing", 0.0, TermKind::Step, String::new());
        let mut b = MemoryPlan::default();
        b.push("activations", 5.0, TermKind::Step, String::new());
        a.extend("reward", b);
        assert_eq!(a.terms.len(), 2);
        assert_eq!(a.terms[1].name, "reward: activations");
        assert_eq!(a.bytes(TermKind::Resident), 3.0);
        assert_eq!(a.bytes(TermKind::Step), 5.0);
        assert_eq!(a.total(), 8.0);
        assert!(a.to_string().contains("| term | MiB |"));
        a.push(
            "more",
            2.0 * (1u64 << 30) as f64,
            TermKind::Step,
            String::new(),
        );
        assert!(a.to_string().contains("| more | 2.00 | 100% |"), "{a}");
    }
}
