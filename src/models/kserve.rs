//! Models behind the KServe V2 inference protocol (Triton, Seldon MLServer, KServe), over
//! its REST binding: what lets an agent's model run on a GPU server while the loop stays here.
//!
//! An agent manifest names the model's URL in `[endpoints]` (`det =
//! "http://host:8000/v2/models/ppocrv5_det"`); the agent then calls it where it would run the
//! ONNX file. Tensors travel as JSON (`FP32`, flat `data`): the binary-data extension is
//! Triton's, and MLServer 1.7 answers it with a 500. Calls are blocking (agents run on their
//! own threads), time out, and fail with the server's own message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A model served at `url` (`…/v2/models/NAME`).
pub struct RemoteModel {
    url: String,
    agent: ureq::Agent,
    input: String,
    output: String,
    output_shape: Vec<i64>,
    inputs: Vec<TensorMeta>,
    outputs: Vec<TensorMeta>,
}

/// A tensor as the server's metadata describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorMeta {
    pub name: String,
    #[serde(default)]
    pub datatype: String,
    #[serde(default)]
    pub shape: Vec<i64>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    inputs: Vec<TensorMeta>,
    #[serde(default)]
    outputs: Vec<TensorMeta>,
}

#[derive(Serialize)]
struct InferRequest<'a> {
    inputs: [InputTensor<'a>; 1],
    outputs: [RequestedOutput<'a>; 1],
}

#[derive(Serialize)]
struct InputTensor<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    data: &'a [f32],
}

#[derive(Serialize)]
struct RequestedOutput<'a> {
    name: &'a str,
}

#[derive(Deserialize)]
struct InferResponse {
    outputs: Vec<OutputTensor>,
}

#[derive(Deserialize)]
struct OutputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Vec<f32>,
}

/// The longest a server may take for one inference (a large detector input on a busy CPU
/// server takes seconds; the agent's own timeout bounds the whole call anyway).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl RemoteModel {
    /// Reads the model's metadata from `url`; the model must take and give one tensor (as
    /// every PaddleOCR model does).
    pub fn connect(url: &str) -> Result<Self, String> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || !url.contains("/v2/models/")
        {
            return Err(format!(
                "{url} is not a KServe V2 model URL (expected http://HOST:PORT/v2/models/NAME)"
            ));
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(CALL_TIMEOUT))
            .http_status_as_error(false)
            .build();
        let agent: ureq::Agent = config.into();
        let mut r = agent
            .get(&url)
            .call()
            .map_err(|e| unreachable_msg(&url, &e))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{url}: cannot read the reply: {e}"))?;
        if status != 200 {
            return Err(format!("{url}: HTTP {status}: {}", server_message(&body)));
        }
        let meta: Metadata = serde_json::from_str(&body)
            .map_err(|e| format!("{url}: the metadata is not KServe V2 JSON ({e})"))?;
        let (Some(input), Some(output)) = (meta.inputs.first(), meta.outputs.first()) else {
            return Err(format!(
                "{url}: the model's metadata lists no inputs or no outputs"
            ));
        };
        if meta.inputs.len() != 1 {
            return Err(format!(
                "{url}: the model takes {} inputs; only one-tensor models can be served remotely",
                meta.inputs.len()
            ));
        }
        if !input.datatype.is_empty() && input.datatype != "FP32" {
            return Err(format!(
                "{url}: the model takes {} input; p2g sends FP32",
                input.datatype
            ));
        }
        Ok(Self {
            input: input.name.clone(),
            output: output.name.clone(),
            output_shape: output.shape.clone(),
            inputs: meta.inputs.clone(),
            outputs: meta.outputs.clone(),
            url,
            agent,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first output's declared shape (`-1` for a dynamic axis).
    pub fn output_shape(&self) -> &[i64] {
        &self.output_shape
    }

    pub fn inputs(&self) -> &[TensorMeta] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorMeta] {
        &self.outputs
    }

    /// Runs the model on `data` laid out as `shape`; returns the first output's shape and
    /// data.
    pub fn infer(&self, shape: &[usize], data: &[f32]) -> Result<(Vec<i64>, Vec<f32>), String> {
        let req = InferRequest {
            inputs: [InputTensor {
                name: &self.input,
                shape,
                datatype: "FP32",
                data,
            }],
            outputs: [RequestedOutput { name: &self.output }],
        };
        let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        let url = format!("{}/infer", self.url);
        let mut r = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| unreachable_msg(&url, &e))?;
        let status = r.status().as_u16();
        let bytes = r
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_vec()
            .map_err(|e| format!("{url}: cannot read the reply: {e}"))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{url}: HTTP {status}: {}", server_message(&text)));
        }
        let resp: InferResponse = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{url}: the reply is not KServe V2 JSON ({e})"))?;
        let out = resp
            .outputs
            .into_iter()
            .find(|o| o.name == self.output)
            .ok_or_else(|| format!("{url}: the reply has no output {:?}", self.output))?;
        if out.datatype != "FP32" {
            return Err(format!("{url}: the output is {}, not FP32", out.datatype));
        }
        let n: i64 = out.shape.iter().product();
        if n < 0 || n as usize != out.data.len() {
            return Err(format!(
                "{url}: the output's shape {:?} does not match its {} values",
                out.shape,
                out.data.len()
            ));
        }
        Ok((out.shape, out.data))
    }
}

/// The error a server put in its body: `{"error": …}` (KServe, MLServer), FastAPI's
/// `{"detail": …}`, or the text itself, on one line.
fn server_message(body: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = match v {
        Some(v) => match (v.get("error"), v.get("detail")) {
            (Some(serde_json::Value::String(s)), _) => s.clone(),
            (Some(other), _) | (None, Some(other)) => other.to_string(),
            (None, None) => v.to_string(),
        },
        None => body.to_string(),
    };
    crate::one_line(&msg, 400)
}

fn unreachable_msg(url: &str, e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("{url}: no reply within {} s", CALL_TIMEOUT.as_secs()),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach {url}: connection refused (is the inference server running?)")
        }
        other => format!("cannot reach {url}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_v2_model_url_and_reports_a_dead_server() {
        let e = RemoteModel::connect("ftp://x/v2/models/a").err().unwrap();
        assert!(e.contains("not a KServe V2 model URL"), "{e}");
        let e = RemoteModel::connect("http://127.0.0.1:9/v2").err().unwrap();
        assert!(e.contains("not a KServe V2 model URL"), "{e}");
        // Port 9 (discard) is closed on a test machine.
        let e = RemoteModel::connect("http://127.0.0.1:9/v2/models/a")
            .err()
            .unwrap();
        assert!(e.contains("cannot reach"), "{e}");
    }

    #[test]
    fn server_messages_are_one_line() {
        assert_eq!(
            server_message("{\"error\":\"Model nope\\n not found\"}"),
            "Model nope not found"
        );
        assert!(
            server_message("{\"detail\":[{\"msg\":\"Field required\"}]}")
                .contains("Field required")
        );
        assert_eq!(
            server_message("Internal Server Error"),
            "Internal Server Error"
        );
    }
}
