//! Input and output: checkpoints (safetensors, records, atomic writes), memory and time probes, progress bars.

pub mod atomic;
pub mod checkpoint;
pub mod checksums;
pub mod probe;
pub mod progress;
pub mod tensor_files;
