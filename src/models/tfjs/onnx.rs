//! A minimal ONNX writer: just the protobuf messages a converted graph needs (model, graph,
//! nodes, attributes, initializers, typed inputs and outputs).
//!
//! Written by hand rather than through a protobuf code generator: the subset is small, and
//! the bytes must be identical on every machine (the converted file is pinned by its sha256),
//! which a hand-written encoder that emits fields in one fixed order guarantees.

/// ONNX `TensorProto.DataType` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int64 = 7,
}

/// A tensor stored in the model (an initializer).
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Float(Vec<f32>),
    Int64(Vec<i64>),
}

/// One node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    Str(String),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

/// A graph input or output: a float tensor of known (or, with -1, named) dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dims: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

/// The ONNX IR version and default-domain opset the converter emits (ops as of opset 13:
/// `Split` and `Pad` take sizes as inputs, `Resize` takes `roi`, `scales`, `sizes`).
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 13;

/// Serialises `graph` as an ONNX model.
pub fn model_bytes(graph: &Graph, producer: &str) -> Vec<u8> {
    let mut m = Vec::new();
    put_varint_field(&mut m, 1, IR_VERSION as u64);
    put_bytes(&mut m, 2, producer.as_bytes());
    put_message(&mut m, 7, &graph_bytes(graph));
    let mut opset = Vec::new();
    put_bytes(&mut opset, 1, b"");
    put_varint_field(&mut opset, 2, OPSET as u64);
    put_message(&mut m, 8, &opset);
    m
}

fn graph_bytes(g: &Graph) -> Vec<u8> {
    let mut out = Vec::new();
    for n in &g.nodes {
        put_message(&mut out, 1, &node_bytes(n));
    }
    put_bytes(&mut out, 2, g.name.as_bytes());
    for t in &g.initializers {
        put_message(&mut out, 5, &tensor_bytes(t));
    }
    for v in &g.inputs {
        put_message(&mut out, 11, &value_info_bytes(v));
    }
    for v in &g.outputs {
        put_message(&mut out, 12, &value_info_bytes(v));
    }
    out
}

fn node_bytes(n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for i in &n.inputs {
        put_bytes(&mut out, 1, i.as_bytes());
    }
    for o in &n.outputs {
        put_bytes(&mut out, 2, o.as_bytes());
    }
    put_bytes(&mut out, 3, n.name.as_bytes());
    put_bytes(&mut out, 4, n.op.as_bytes());
    for (name, a) in &n.attrs {
        put_message(&mut out, 5, &attr_bytes(name, a));
    }
    out
}

fn attr_bytes(name: &str, a: &Attr) -> Vec<u8> {
    // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, INTS 7.
    let mut out = Vec::new();
    put_bytes(&mut out, 1, name.as_bytes());
    match a {
        Attr::Float(f) => {
            put_key(&mut out, 2, 5);
            out.extend_from_slice(&f.to_le_bytes());
            put_varint_field(&mut out, 20, 1);
        }
        Attr::Int(i) => {
            put_varint_field(&mut out, 3, *i as u64);
            put_varint_field(&mut out, 20, 2);
        }
        Attr::Str(s) => {
            put_bytes(&mut out, 4, s.as_bytes());
            put_varint_field(&mut out, 20, 3);
        }
        Attr::Ints(v) => {
            put_packed_varints(&mut out, 8, v);
            put_varint_field(&mut out, 20, 7);
        }
    }
    out
}

fn tensor_bytes(t: &Initializer) -> Vec<u8> {
    let mut out = Vec::new();
    put_packed_varints(&mut out, 1, &t.dims);
    let (dtype, raw): (DataType, Vec<u8>) = match &t.data {
        TensorData::Float(v) => (
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::Int64(v) => (
            DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    put_varint_field(&mut out, 2, dtype as u64);
    put_bytes(&mut out, 8, t.name.as_bytes());
    put_bytes(&mut out, 9, &raw);
    out
}

fn value_info_bytes(v: &ValueInfo) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in &v.dims {
        let mut dim = Vec::new();
        if d >= 0 {
            put_varint_field(&mut dim, 1, d as u64);
        } else {
            put_bytes(&mut dim, 2, b"n");
        }
        put_message(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, 1, DataType::Float as u64);
    put_message(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    put_message(&mut ty, 1, &tensor);
    let mut out = Vec::new();
    put_bytes(&mut out, 1, v.name.as_bytes());
    put_message(&mut out, 2, &ty);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_message(out: &mut Vec<u8>, field: u32, msg: &[u8]) {
    put_bytes(out, field, msg);
}

fn put_packed_varints(out: &mut Vec<u8>, field: u32, v: &[i64]) {
    let mut packed = Vec::new();
    for &x in v {
        // Negative int64 values are ten-byte two's-complement varints in protobuf.
        put_varint(&mut packed, x as u64);
    }
    put_bytes(out, field, &packed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_protobuf() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut n = Vec::new();
        put_varint(&mut n, -1i64 as u64);
        assert_eq!(n.len(), 10);
        let mut f = Vec::new();
        put_varint_field(&mut f, 20, 7);
        assert_eq!(f, [0xa0, 0x01, 0x07]);
    }
}
