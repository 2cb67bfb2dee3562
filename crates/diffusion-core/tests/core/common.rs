//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{collections::HashMap, path::PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// The backend the tests run on (`flex` by default, `wgpu` / `cuda` by feature).
pub type B = diffusion_core::backend::DefaultBackend;
/// With autodiff.
pub type AD = burn::backend::Autodiff<B>;

/// A fixture file: under the crate's `tests/fixtures` where it was built, else (a test binary
/// copied to another machine) relative to the repository root it runs from.
pub fn fixture(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.exists() {
        built
    } else {
        PathBuf::from("crates/diffusion-core/tests/fixtures")
    };
    dir.join(rel)
}

/// Every F32 tensor of a safetensors file as `(shape, values)`.
pub fn read_tensors(rel: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(rel)).expect("fixture present");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.names()
        .into_iter()
        .map(|n| {
            let v = st.tensor(n).unwrap();
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n.to_string(), (v.shape().to_vec(), vals))
        })
        .collect()
}

pub fn tensor<Bk: Backend, const D: usize>(
    t: &(Vec<usize>, Vec<f32>),
    dev: &Bk::Device,
) -> Tensor<Bk, D> {
    Tensor::from_data(TensorData::new(t.1.clone(), t.0.clone()), dev)
}

pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// `||a - b|| / ||b||`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}
