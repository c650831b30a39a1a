//! Reading a TensorFlow.js graph model: `model.json` (a GraphDef as JSON, plus a manifest of
//! weight buffers) and its `.bin` shards.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::ConvertError;

/// A host tensor: the constants of a graph, and what folding them gives.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<i64>,
    pub data: HostData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    /// Every integer type, widened (shapes, axes and indices are small).
    Int(Vec<i64>),
}

impl HostTensor {
    pub fn len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::Int(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as integers (a float constant used as a shape or axis must be whole).
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            HostData::Int(v) => v.clone(),
            HostData::F32(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// One node of the graph, attributes kept as the converter's JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct TfNode {
    pub name: String,
    pub op: String,
    #[serde(default)]
    pub input: Vec<String>,
    #[serde(default)]
    pub attr: serde_json::Map<String, serde_json::Value>,
}

impl TfNode {
    fn attr(&self, key: &str) -> Option<&serde_json::Value> {
        self.attr.get(key)
    }

    pub fn attr_f32(&self, key: &str) -> Option<f32> {
        self.attr(key)?.get("f")?.as_f64().map(|f| f as f32)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        let v = self.attr(key)?.get("i")?;
        v.as_i64().or_else(|| v.as_str()?.parse().ok())
    }

    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        self.attr(key)?.get("b")?.as_bool()
    }

    /// A string attribute (base64 in the JSON GraphDef).
    pub fn attr_str(&self, key: &str) -> Option<String> {
        let s = self.attr(key)?.get("s")?.as_str()?;
        String::from_utf8(base64_decode(s)?).ok()
    }

    pub fn attr_ints(&self, key: &str) -> Option<Vec<i64>> {
        let list = self.attr(key)?.get("list")?;
        let Some(items) = list.get("i") else {
            return Some(Vec::new());
        };
        items
            .as_array()?
            .iter()
            .map(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .collect()
    }

    /// The static shape of a `Placeholder` (-1 for an unknown dimension).
    pub fn attr_shape(&self, key: &str) -> Option<Vec<i64>> {
        let dims = self.attr(key)?.get("shape")?.get("dim")?.as_array()?;
        dims.iter()
            .map(|d| match d.get("size") {
                Some(s) => s.as_i64().or_else(|| s.as_str()?.parse().ok()),
                None => Some(-1),
            })
            .collect()
    }

    /// The data inputs (control dependencies, `^name`, dropped), as `node:output`.
    pub fn data_inputs(&self) -> Vec<String> {
        self.input
            .iter()
            .filter(|i| !i.starts_with('^'))
            .map(|i| tensor_ref(i))
            .collect()
    }
}

/// `name` → `name:0`; `name:1` stays.
pub fn tensor_ref(s: &str) -> String {
    match s.rsplit_once(':') {
        Some((_, k)) if k.parse::<u32>().is_ok() => s.to_string(),
        _ => format!("{s}:0"),
    }
}

#[derive(Debug, Deserialize)]
struct ModelJson {
    #[serde(rename = "modelTopology")]
    topology: Topology,
    #[serde(rename = "weightsManifest")]
    weights_manifest: Vec<WeightGroup>,
    #[serde(default)]
    signature: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Topology {
    node: Vec<TfNode>,
}

#[derive(Debug, Deserialize)]
struct WeightGroup {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Debug, Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<i64>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Debug, Deserialize)]
struct Quantization {
    dtype: String,
    #[serde(default)]
    scale: Option<f32>,
    #[serde(default)]
    min: Option<f32>,
}

/// A loaded graph model.
#[derive(Debug)]
pub struct GraphModel {
    pub nodes: Vec<TfNode>,
    pub weights: HashMap<String, HostTensor>,
    /// Output tensors (`node:k`) in the signature's order, when it has one.
    pub outputs: Vec<String>,
}

/// Reads `model.json` and the weight files it names (relative to its folder).
pub fn load(json_path: &Path) -> Result<GraphModel, ConvertError> {
    let bad = |reason: String| ConvertError::Format(reason);
    let text = std::fs::read_to_string(json_path)
        .map_err(|e| bad(format!("cannot read {}: {e}", json_path.display())))?;
    let m: ModelJson = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a TensorFlow.js graph model ({e})")))?;
    let dir = json_path.parent().unwrap_or(Path::new("."));
    let mut weights = HashMap::new();
    for g in &m.weights_manifest {
        let mut buf = Vec::new();
        for p in &g.paths {
            // A shard is a file beside model.json, never a path elsewhere.
            if p.contains('/') || p.contains('\\') || p.starts_with('.') {
                return Err(bad(format!("weight file {p:?} is not a plain file name")));
            }
            let bytes = std::fs::read(dir.join(p))
                .map_err(|e| bad(format!("cannot read weight file {p}: {e}")))?;
            buf.extend_from_slice(&bytes);
        }
        let mut at = 0usize;
        for w in &g.weights {
            let (t, used) = decode_weight(w, &buf[at.min(buf.len())..])?;
            at += used;
            weights.insert(w.name.clone(), t);
        }
        if at != buf.len() {
            return Err(bad(format!(
                "the weight files hold {} bytes but the manifest describes {at}",
                buf.len()
            )));
        }
    }
    let outputs = m
        .signature
        .as_ref()
        .and_then(|s| s.get("outputs")?.as_object().cloned())
        .map(|o| o.keys().map(|k| tensor_ref(k)).collect())
        .unwrap_or_default();
    Ok(GraphModel {
        nodes: m.topology.node,
        weights,
        outputs,
    })
}

fn decode_weight(w: &WeightSpec, buf: &[u8]) -> Result<(HostTensor, usize), ConvertError> {
    let n: i64 = w.shape.iter().product();
    if w.shape.iter().any(|&d| d < 0) || n > (1 << 31) {
        return Err(ConvertError::Format(format!(
            "weight {} has shape {:?}",
            w.name, w.shape
        )));
    }
    let n = n as usize;
    let stored = w
        .quantization
        .as_ref()
        .map_or(w.dtype.as_str(), |q| &q.dtype);
    let width = match stored {
        "float32" | "int32" => 4,
        "float16" | "uint16" => 2,
        "uint8" | "bool" => 1,
        other => {
            return Err(ConvertError::Format(format!(
                "weight {} is stored as {other}, which the converter does not read",
                w.name
            )))
        }
    };
    let bytes = n * width;
    if buf.len() < bytes {
        return Err(ConvertError::Format(format!(
            "the weight files end inside weight {} (truncated download?)",
            w.name
        )));
    }
    let b = &buf[..bytes];
    let le4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    let raw: Vec<f64> = match stored {
        "float32" => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(le4(c)) as f64)
            .collect(),
        "int32" => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(le4(c)) as f64)
            .collect(),
        "float16" => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        "uint16" => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64)
            .collect(),
        _ => b.iter().map(|&x| x as f64).collect(),
    };
    // Affine-quantised weights (uint8/uint16) are q * scale + min, as TF.js dequantises them.
    let affine = w
        .quantization
        .as_ref()
        .filter(|q| q.dtype.starts_with("uint"))
        .map(|q| (q.scale.unwrap_or(1.0) as f64, q.min.unwrap_or(0.0) as f64));
    let data = match w.dtype.as_str() {
        "float32" => HostData::F32(
            raw.iter()
                .map(|&x| match affine {
                    Some((s, m)) => (x * s + m) as f32,
                    None => x as f32,
                })
                .collect(),
        ),
        "int32" | "bool" => HostData::Int(raw.iter().map(|&x| x as i64).collect()),
        other => {
            return Err(ConvertError::Format(format!(
                "weight {} has dtype {other}",
                w.name
            )))
        }
    };
    Ok((
        HostTensor {
            shape: w.shape.clone(),
            data,
        },
        bytes,
    ))
}

/// Standard base64 (the GraphDef's string attributes), padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_graphdef_strings() {
        assert_eq!(base64_decode("VkFMSUQ=").unwrap(), b"VALID");
        assert_eq!(base64_decode("TkhXQw==").unwrap(), b"NHWC");
        assert_eq!(base64_decode("U0FNRQ").unwrap(), b"SAME");
    }

    #[test]
    fn refs_name_an_output() {
        assert_eq!(tensor_ref("a/b"), "a/b:0");
        assert_eq!(tensor_ref("split:1"), "split:1");
        assert_eq!(tensor_ref("Identity_2:0"), "Identity_2:0");
    }
}
