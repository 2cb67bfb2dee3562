//! Parameter snapshots: what a training smoke test compares before and after a step ("every
//! trainable parameter moved, every frozen one did not", "a resumed run equals an uninterrupted
//! one").

use std::collections::HashMap;

use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::{backend::Backend, Tensor},
};

use crate::error::{invalid, Result};

/// One parameter's values (row-major, as `f32`) and whether it is trainable.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamValues {
    /// The values.
    pub values: Vec<f32>,
    /// Whether the parameter requires a gradient.
    pub trainable: bool,
}

/// Every float parameter of `module`, keyed by its id (as a string, stable across clones and
/// checkpoint loads).
///
/// # Errors
/// `InvalidConfig` when a parameter's data cannot be read back as `f32`.
pub fn param_snapshot<B: Backend, M: Module<B>>(
    module: &M,
) -> Result<HashMap<String, ParamValues>> {
    struct Snap(Result<HashMap<String, ParamValues>>);
    impl<B: Backend> ModuleVisitor<B> for Snap {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let Ok(map) = &mut self.0 else { return };
            match p.val().into_data().convert::<f32>().to_vec() {
                Ok(values) => {
                    let trainable = p.is_require_grad();
                    map.insert(p.id.to_string(), ParamValues { values, trainable });
                }
                Err(e) => self.0 = Err(invalid("parameter", format!("{}: {e:?}", p.id))),
            }
        }
    }
    let mut snap = Snap(Ok(HashMap::new()));
    module.visit(&mut snap);
    snap.0
}

/// How many entries of the parameters in both snapshots differ by more than `tol`, and how
/// many entries were compared: `(differing, total)`.
pub fn differing_entries(
    a: &HashMap<String, ParamValues>,
    b: &HashMap<String, ParamValues>,
    tol: f32,
) -> (usize, usize) {
    let (mut off, mut total) = (0, 0);
    for (id, p) in a {
        let Some(q) = b.get(id) else { continue };
        total += p.values.len();
        off += p
            .values
            .iter()
            .zip(&q.values)
            .filter(|(x, y)| (*x - *y).abs() > tol)
            .count();
    }
    (off, total)
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::*;
    use crate::backend::DefaultBackend;

    #[test]
    fn snapshots_every_parameter_and_counts_differences() {
        let lin: Linear<DefaultBackend> = LinearConfig::new(2, 3).init(&Default::default());
        let a = param_snapshot(&lin).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[&lin.weight.id.to_string()].values.len(), 6);
        let mut b = a.clone();
        let w = b.get_mut(&lin.weight.id.to_string()).unwrap();
        w.values[0] += 1.0;
        w.values[1] += 1e-9;
        assert_eq!(differing_entries(&a, &b, 1e-6), (1, 9));
        assert_eq!(differing_entries(&a, &a, 0.0), (0, 9));
    }
}
