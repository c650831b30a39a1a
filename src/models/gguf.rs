//! Derived model files: a GGUF re-encoded at fetch time.
//!
//! A bundle file may be `derive`d from another file of its bundle by re-encoding its tensors of
//! one type as another (e.g. Q5_0 as Q8_0, a type candle has fast kernels for). The output is
//! deterministic (metadata and tensors written in name order), so a derived file is pinned by
//! its own sha256 in `models.toml` like any downloaded file. The embedded controller no longer
//! needs it (p2g has its own Q5_0 kernel, as fast as Q8_0 and a third smaller); the mechanism
//! stays for models shipped in formats candle runs slowly.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use serde::Deserialize;

use super::ModelError;

/// How a derived file is made from another file of its bundle: exactly one of the rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derive {
    /// The source file (same bundle).
    pub from: String,
    /// Re-encode every tensor stored as `requantize.from` as `requantize.to`.
    #[serde(default)]
    pub requantize: Option<Requantize>,
    /// Convert the file to another format.
    #[serde(default)]
    pub convert: Option<Conversion>,
}

/// A format conversion done at fetch time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    /// A TensorFlow.js graph model (`from` is its `model.json`; its weight files must be files
    /// of the same bundle) to an ONNX model ([`crate::models::tfjs`]).
    TfjsToOnnx,
}

impl Derive {
    /// Whether exactly one rule is given.
    pub fn is_valid(&self) -> bool {
        self.requantize.is_some() != self.convert.is_some()
    }

    /// What the rule does, for the fetch log.
    pub fn describe(&self) -> String {
        match (&self.requantize, self.convert) {
            (Some(r), _) => format!("{} tensors re-encoded as {}", r.from, r.to),
            (None, Some(Conversion::TfjsToOnnx)) => "TensorFlow.js graph converted to ONNX".into(),
            (None, None) => "no rule".into(),
        }
    }

    /// Makes `dst` from `src` by this rule.
    pub fn apply(&self, src: &Path, dst: &Path) -> Result<(), ModelError> {
        match (&self.requantize, self.convert) {
            (Some(r), None) => requantize(src, dst, r),
            (None, Some(Conversion::TfjsToOnnx)) => crate::models::tfjs::convert_file(src, dst)
                .map_err(|e| ModelError::BadFormat {
                    path: src.to_path_buf(),
                    kind: "TensorFlow.js graph model".into(),
                    reason: e.to_string(),
                }),
            _ => Err(ModelError::Manifest(format!(
                "deriving from {}: give exactly one of `requantize` and `convert`",
                self.from
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Requantize {
    pub from: String,
    pub to: String,
}

fn dtype(name: &str) -> Result<GgmlDType, ModelError> {
    Ok(match name {
        "F32" => GgmlDType::F32,
        "F16" => GgmlDType::F16,
        "Q4_0" => GgmlDType::Q4_0,
        "Q4_1" => GgmlDType::Q4_1,
        "Q5_0" => GgmlDType::Q5_0,
        "Q5_1" => GgmlDType::Q5_1,
        "Q8_0" => GgmlDType::Q8_0,
        "Q4K" | "Q4_K" => GgmlDType::Q4K,
        "Q6K" | "Q6_K" => GgmlDType::Q6K,
        other => {
            return Err(ModelError::Manifest(format!(
                "unknown GGUF tensor type {other:?} in a requantize rule"
            )))
        }
    })
}

/// Writes `dst`: `src` with every `rule.from` tensor re-encoded as `rule.to`.
pub fn requantize(src: &Path, dst: &Path, rule: &Requantize) -> Result<(), ModelError> {
    let (from, to) = (dtype(&rule.from)?, dtype(&rule.to)?);
    let bad = |reason: String| ModelError::BadFormat {
        path: src.to_path_buf(),
        kind: "GGUF model".into(),
        reason,
    };
    let f =
        File::open(src).map_err(|e| ModelError::io(format!("cannot read {}", src.display()), e))?;
    let mut reader = BufReader::new(f);
    let ct = gguf_file::Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let dev = Device::Cpu;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = ct
            .tensor(&mut reader, name, &dev)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let t = if t.dtype() == from {
            let x = t.dequantize(&dev).map_err(|e| bad(e.to_string()))?;
            QTensor::quantize(&x, to).map_err(|e| bad(format!("tensor {name}: {e}")))?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let mut keys: Vec<&String> = ct.metadata.keys().collect();
    keys.sort();
    let marker = gguf_file::Value::String(format!("{}->{}", rule.from, rule.to));
    let mut metadata: Vec<(&str, &gguf_file::Value)> = keys
        .iter()
        .map(|k| (k.as_str(), &ct.metadata[*k]))
        .collect();
    metadata.push(("p2g.requantized", &marker));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let out = File::create(dst)
        .map_err(|e| ModelError::io(format!("cannot write {}", dst.display()), e))?;
    let mut w = BufWriter::new(out);
    gguf_file::write(&mut w, &metadata, &refs).map_err(|e| bad(format!("writing: {e}")))?;
    let out = w
        .into_inner()
        .map_err(|e| ModelError::io("cannot write a model file (disk full?)", e.into_error()))?;
    out.sync_all()
        .map_err(|e| ModelError::io("cannot write a model file (disk full?)", e))?;
    drop(out);
    let _ = std::io::stdout().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn requantising_is_deterministic_and_changes_only_the_named_type() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 64.0 * 32.0, &dev)
            .unwrap()
            .reshape((64, 32))
            .unwrap();
        let q5 = QTensor::quantize(&(w.clone() / 1000.0).unwrap(), GgmlDType::Q5_0).unwrap();
        let f = QTensor::quantize(&w, GgmlDType::F32).unwrap();
        let src = dir.path().join("m.gguf");
        let name = gguf_file::Value::String("tiny".into());
        let mut out = File::create(&src).unwrap();
        gguf_file::write(
            &mut out,
            &[("general.name", &name)],
            &[("a", &q5), ("b", &f)],
        )
        .unwrap();
        drop(out);
        let rule = Requantize {
            from: "Q5_0".into(),
            to: "Q8_0".into(),
        };
        let (d1, d2) = (dir.path().join("d1.gguf"), dir.path().join("d2.gguf"));
        requantize(&src, &d1, &rule).unwrap();
        requantize(&src, &d2, &rule).unwrap();
        assert_eq!(std::fs::read(&d1).unwrap(), std::fs::read(&d2).unwrap());
        let mut r = BufReader::new(File::open(&d1).unwrap());
        let ct = gguf_file::Content::read(&mut r).unwrap();
        assert_eq!(ct.tensor_infos["a"].ggml_dtype, GgmlDType::Q8_0);
        assert_eq!(ct.tensor_infos["b"].ggml_dtype, GgmlDType::F32);
        assert!(ct.metadata.contains_key("p2g.requantized"));
        let bad = Requantize {
            from: "Q9".into(),
            to: "Q8_0".into(),
        };
        assert!(requantize(&src, &d1, &bad).is_err());
        let e = requantize(&dir.path().join("missing.gguf"), &d1, &rule).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
