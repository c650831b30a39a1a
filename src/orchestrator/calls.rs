//! Agent calls: one call of the grounding loop, its observation for the controller, and
//! what it leaves in the session (evidence regions, leads, the call's trace event).

use std::time::Instant;

use super::evidence::{self, Region};
use super::zoom::ZoomRecord;
use super::{AskOptions, Session};
use crate::agents::CallOutcome;
pub(super) use crate::agents::Caller;
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
        let (outcome, scale) = self.run_call(agent, &key, &arguments, opts, caller).await;
        let regions: Vec<Region> = match &outcome {
            CallOutcome::Found { ids } => ids
                .iter()
                .filter_map(|id| self.evidence.get(id).cloned())
                .collect(),
            _ => Vec::new(),
        };
        let rendered = if regions.is_empty() {
            String::new()
        } else {
            let refs: Vec<&Region> = regions.iter().collect();
            evidence::render(&refs, self.facts.width, self.facts.height)
        };
        let content = outcome.observation(agent, &rendered);
        let zoom = zoom.map(|z| ZoomRecord {
            scale: scale.or(z.scale),
            ..z
        });
        self.trace.record(TraceEvent::Tool {
            step,
            agent: agent.to_string(),
            arguments,
            status: outcome.status(),
            summary: outcome.summary(agent),
            regions,
            zoom,
            elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
        });
        let (ids, repeated) = match outcome {
            CallOutcome::Found { ids } => {
                self.call_regions.insert(key, ids.clone());
                (ids, false)
            }
            CallOutcome::Repeated { .. } => (Vec::new(), true),
            _ => (Vec::new(), false),
        };
        Called {
            content,
            ids,
            scale,
            repeated,
        }
    }

    /// Finds the agent, runs it within the timeout and cancellation, and files what it found
    /// as evidence; returns how the call ended and the magnification a zoomed read applied.
    async fn run_call(
        &mut self,
        agent: &str,
        key: &str,
        arguments: &serde_json::Value,
        opts: &AskOptions,
        caller: Caller,
    ) -> (CallOutcome, Option<f32>) {
        if self.orch.tools.resolve(agent, caller).is_ok() {
            if let Some(earlier) = self.call_regions.get(key).cloned() {
                return (CallOutcome::Repeated { earlier }, None);
            }
        }
        let reply = self
            .orch
            .tools
            .call(
                agent,
                caller,
                &self.image,
                arguments.clone(),
                self.orch.cfg.agent_timeout,
                &opts.ctx.cancel,
            )
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(outcome) => return (outcome, None),
        };
        let mut ids: Vec<String> = Vec::new();
        for f in &reply.findings {
            let id = self.evidence.add(agent, f);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.leads.extend(reply.leads.iter().cloned());
        let scale = reply
            .output
            .get("zoom")
            .and_then(|z| z.get("scale"))
            .and_then(|s| s.as_f64())
            .map(|s| s as f32);
        (CallOutcome::Found { ids }, scale)
    }
}
