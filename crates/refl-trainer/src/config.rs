//! Reading settings from TOML or JSON files, with errors that name the file and the line.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Result, TrainError};

/// Reads settings of any type (a [`crate::LearnerConfig`], a method's config, a user's own
/// struct of both) from a `.toml` or `.json` file. Unknown keys are errors where the type
/// denies them (every config of this crate does).
///
/// # Errors
/// `ConfigFile` naming the file, with the parser's message (line and column).
pub fn load_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let file_error = |reason: String| TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(&text).map_err(|e| file_error(e.to_string())),
        Some("json") => serde_json::from_str(&text).map_err(|e| file_error(e.to_string())),
        other => Err(file_error(format!(
            "unknown config format {other:?}: use .toml or .json"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LearnerConfig, PrflConfig};

    #[test]
    fn toml_and_json_round_trip_and_name_the_field() {
        let cfg = LearnerConfig::new(10, "out/run");
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("cfg.toml");
        std::fs::write(&t, toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(load_config::<LearnerConfig>(&t).unwrap(), cfg);
        let j = tmp.path().join("cfg.json");
        std::fs::write(&j, serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(load_config::<LearnerConfig>(&j).unwrap(), cfg);
        std::fs::write(&t, "steps = 'ten'").unwrap();
        let err = load_config::<LearnerConfig>(&t).unwrap_err().to_string();
        assert!(err.contains("steps") && err.contains("cfg.toml"), "{err}");
        let prfl = PrflConfig::default();
        let mut text = toml::to_string(&prfl).unwrap();
        text.push_str("windw = 2\n");
        std::fs::write(&t, text).unwrap();
        let err = load_config::<PrflConfig>(&t).unwrap_err().to_string();
        assert!(err.contains("windw"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = |f: &dyn Fn(&mut PrflConfig)| {
            let mut c = PrflConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(&|c| c.window = 40).contains("prfl.window"));
        assert!(bad(&|c| c.start = Some([5, 3])).contains("prfl.start"));
        assert!(bad(&|c| c.kl_beta = -1.0).contains("prfl.kl_beta"));
        assert!(bad(&|c| c.shards = 0).contains("prfl.shards"));
        assert!(bad(&|c| c.batch = 100_000).contains("prfl.batch"));
        assert!(bad(&|c| c.sampling.steps = 0).contains("prfl.sampling.steps"));
        let mut v = crate::VelrConfig {
            start: [3, 6],
            window: 4,
            sampling: crate::SamplingConfig {
                steps: 8,
                shift: 3.0,
            },
            ..Default::default()
        };
        assert!(v
            .validate()
            .unwrap_err()
            .to_string()
            .contains("velr.window"));
        (v.window, v.label_every) = (1, 0);
        assert!(v
            .validate()
            .unwrap_err()
            .to_string()
            .contains("velr.label_every"));
        let mut l = LearnerConfig::new(10, "x");
        l.steps = usize::MAX;
        assert!(l.validate().unwrap_err().to_string().contains("steps"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Random byte damage (1-5 bytes, optionally a truncation) to valid TOML and JSON
        /// configs of the learner and of every method gives settings or a typed error, never a
        /// panic.
        #[test]
        fn damaged_config_files_never_panic(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..6,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            truncate in proptest::prelude::any::<bool>(),
            json in proptest::prelude::any::<bool>(),
        ) {
            use crate::{RgbReflConfig, SftConfig, VelrConfig};
            use grpo::GrpoConfig;
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(if json { "cfg.json" } else { "cfg.toml" });
            let files = [
                text(&LearnerConfig::new(10, "out/run"), json),
                text(&PrflConfig::default(), json),
                text(&VelrConfig::default(), json),
                text(&GrpoConfig::default(), json),
                text(&RgbReflConfig::default(), json),
                text(&SftConfig::default(), json),
            ];
            for (k, original) in files.iter().enumerate() {
                let mut bytes = original.clone().into_bytes();
                for (i, b) in &edits {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                std::fs::write(&path, &bytes).unwrap();
                let _ = match k {
                    0 => load_config::<LearnerConfig>(&path).and_then(|c| c.validate()),
                    1 => load_config::<PrflConfig>(&path).and_then(|c| c.validate()),
                    2 => load_config::<VelrConfig>(&path).and_then(|c| c.validate()),
                    3 => load_config::<GrpoConfig>(&path).map(drop),
                    4 => load_config::<RgbReflConfig>(&path).and_then(|c| c.validate()),
                    _ => load_config::<SftConfig>(&path).and_then(|c| c.validate("sft")),
                };
            }
        }
    }

    /// A config as TOML or JSON text.
    fn text<T: serde::Serialize>(value: &T, json: bool) -> String {
        if json {
            serde_json::to_string_pretty(value).unwrap()
        } else {
            toml::to_string(value).unwrap()
        }
    }
}
