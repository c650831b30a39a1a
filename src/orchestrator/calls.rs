//! Agent calls: one call of the grounding loop, its observation for the controller, and
//! what it leaves in the session (evidence regions, leads, the call's trace event).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::evidence::{self, Region};
use super::zoom::ZoomRecord;
use super::{AskOptions, Session};
use crate::agents::{AgentError, DynAgent};
use crate::trace::TraceEvent;
use crate::vision::BBox;

/// What one agent call left: the observation for the controller, the regions it returned
/// and the magnification a zoomed read applied.
pub(super) struct Called {
    pub content: String,
    pub ids: Vec<String>,
    pub scale: Option<f32>,
    /// The same call was made before (its result was not run again).
    pub repeated: bool,
}

impl Session<'_> {
    /// A question about a region reads that region when the controller calls an agent without
    /// one: the person pointed at it.
    pub(super) fn resolve_region_argument(
        &self,
        mut arguments: serde_json::Value,
        region: Option<BBox>,
    ) -> serde_json::Value {
        if let (Some(r), Some(obj)) = (region, arguments.as_object_mut()) {
            if !obj.contains_key("region") {
                let r = r.rounded();
                obj.insert("region".into(), serde_json::json!([r.x1, r.y1, r.x2, r.y2]));
            }
        }
        arguments
    }

    /// Runs one agent call and returns the observation for the controller.
    pub(super) async fn call(
        &mut self,
        step: usize,
        agent: &str,
        arguments: serde_json::Value,
        opts: &AskOptions,
        zoom: Option<ZoomRecord>,
        caller: Caller,
    ) -> Called {
        let key = format!("{agent} {arguments}");
        let t0 = Instant::now();
        let record = |this: &mut Self,
                      status: &str,
                      summary: String,
                      regions: Vec<Region>,
                      zoom: Option<ZoomRecord>| {
            this.trace.record(TraceEvent::Tool {
                step,
                agent: agent.to_string(),
                arguments: arguments.clone(),
                status: status.to_string(),
                summary,
                regions,
                zoom,
                elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        };
        let said = |content: String| Called {
            content,
            ids: Vec::new(),
            scale: None,
            repeated: false,
        };
        let offered = |a: &&Arc<dyn DynAgent>| {
            caller == Caller::Loop || !self.orch.unoffered.contains(a.name())
        };
        let found = self
            .orch
            .agents
            .iter()
            .filter(offered)
            .find(|a| a.name() == agent)
            .cloned();
        let Some(a) = found else {
            let names: Vec<&str> = self.orch.offered().map(|a| a.name()).collect();
            let msg = format!(
                "There is no tool named {agent:?}. Available: {}.",
                names.join(", ")
            );
            record(self, "unknown_tool", msg.clone(), Vec::new(), zoom);
            return said(msg);
        };
        if let Some(ids) = self.call_regions.get(&key).cloned() {
            let msg = if ids.is_empty() {
                format!("You already called {agent} with these arguments and it found nothing. Do not repeat it; answer, or try a different region.")
            } else {
                format!(
                    "You already called {agent} with these arguments; its results are regions {} above. Do not repeat it: answer from them.",
                    span_of(&ids)
                )
            };
            record(self, "repeated", msg.clone(), Vec::new(), zoom);
            return Called {
                repeated: true,
                ..said(msg)
            };
        }
        let cancel = opts.ctx.cancel.clone();
        let run = a.call(&self.image, arguments.clone());
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.orch.cfg.agent_timeout, run) => Some(r),
            _ = wait_cancel(cancel) => None,
        };
        match outcome {
            None => {
                record(self, "cancelled", "cancelled".into(), Vec::new(), zoom);
                said("The call was cancelled.".into())
            }
            Some(Err(_)) => {
                let secs = self.orch.cfg.agent_timeout.as_secs_f64();
                let msg = format!("{agent} did not finish within {secs:.0} s and was stopped. Answer from the evidence you have, or ask for a smaller region.");
                record(self, "timeout", msg.clone(), Vec::new(), zoom);
                said(msg)
            }
            Some(Ok(Err(e))) => {
                let msg = match &e {
                    AgentError::Arguments { reason, .. } => format!(
                        "Error: the arguments of {agent} are invalid ({reason}). Fix them or call it without arguments."
                    ),
                    other => format!("Error: {other}"),
                };
                record(self, "error", e.to_string(), Vec::new(), zoom);
                said(msg)
            }
            Some(Ok(Ok(reply))) => {
                let ids: Vec<String> = reply
                    .findings
                    .iter()
                    .map(|f| self.evidence.add(agent, f))
                    .collect();
                let mut unique: Vec<String> = Vec::new();
                for id in &ids {
                    if !unique.contains(id) {
                        unique.push(id.clone());
                    }
                }
                self.leads.extend(reply.leads.iter().cloned());
                let scale = reply
                    .output
                    .get("zoom")
                    .and_then(|z| z.get("scale"))
                    .and_then(|s| s.as_f64())
                    .map(|s| s as f32);
                let regions: Vec<Region> = unique
                    .iter()
                    .filter_map(|id| self.evidence.get(id).cloned())
                    .collect();
                let refs: Vec<&Region> = regions.iter().collect();
                let content = if regions.is_empty() {
                    format!("{agent} found nothing.")
                } else {
                    evidence::render(&refs, self.facts.width, self.facts.height)
                };
                let zoom = zoom.map(|z| ZoomRecord { scale, ..z });
                record(
                    self,
                    "ok",
                    format!("{} regions", regions.len()),
                    regions.clone(),
                    zoom,
                );
                self.call_regions.insert(key, unique.clone());
                Called {
                    content,
                    ids: unique,
                    scale,
                    repeated: false,
                }
            }
        }
    }
}

/// Who asked for a call: the controller may call only the tools it is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    Controller,
    Loop,
}

/// `r1–r40` for a contiguous run of ids, else a list.
fn span_of(ids: &[String]) -> String {
    let nums: Vec<usize> = ids
        .iter()
        .filter_map(|i| i.strip_prefix('r').and_then(|n| n.parse().ok()))
        .collect();
    let contiguous =
        nums.len() == ids.len() && nums.len() > 2 && nums.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        format!("{}–{}", ids[0], ids[ids.len() - 1])
    } else {
        ids.join(", ")
    }
}

async fn wait_cancel(flag: Arc<AtomicBool>) {
    loop {
        if flag.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
