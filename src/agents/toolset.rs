//! The agents one orchestrator (or server) holds, keyed by tool name, and what one call of
//! them came to.
//!
//! The shape is rig's `ToolSet`: tools are found by name, never by scanning a list in
//! several places, and a call ends in one [`CallOutcome`] from which both the text the
//! controller reads and the status the trace records are made, so the loop, the server and
//! remote agents cannot word the same outcome two ways.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AgentError, AgentReply, Capability, DynAgent, ToolDefinition};
use crate::vision::Image;

/// Who asks for a tool: a controller may call only the tools it is offered; the loop's own
/// policies may also run the agents it keeps to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Controller,
    Loop,
}

/// Two agents share a tool name.
#[derive(Debug, thiserror::Error)]
#[error("two agents are named {0:?}; tool names must be unique")]
pub struct DuplicateTool(pub String);

struct Entry {
    agent: Arc<dyn DynAgent>,
    /// Offered to the controller as a tool (else run only by the loop's policies).
    offered: bool,
}

/// Agents by tool name, in the order they were added (the order a controller sees them).
#[derive(Default)]
pub struct ToolSet {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl ToolSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an agent; `offered` makes it a tool the controller may call.
    pub fn add(&mut self, agent: Arc<dyn DynAgent>, offered: bool) -> Result<(), DuplicateTool> {
        let name = agent.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(DuplicateTool(name));
        }
        self.by_name.insert(name, self.entries.len());
        self.entries.push(Entry { agent, offered });
        Ok(())
    }

    /// The agent `caller` may call by `name`, or the outcome that reports it does not exist
    /// (listing what the caller could have called).
    pub fn resolve(&self, name: &str, caller: Caller) -> Result<&Arc<dyn DynAgent>, CallOutcome> {
        match self.by_name.get(name).map(|&i| &self.entries[i]) {
            Some(e) if e.offered || caller == Caller::Loop => Ok(&e.agent),
            _ => Err(CallOutcome::UnknownTool {
                available: self.offered().map(|a| a.name().to_string()).collect(),
            }),
        }
    }

    /// Every agent, in order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn DynAgent>> {
        self.entries.iter().map(|e| &e.agent)
    }

    /// The agents offered to the controller as tools.
    pub fn offered(&self) -> impl Iterator<Item = &Arc<dyn DynAgent>> {
        self.entries.iter().filter(|e| e.offered).map(|e| &e.agent)
    }

    /// The definitions a controller is shown.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.offered().map(|a| a.definition()).collect()
    }

    /// The first agent (offered or not) that can perceive `cap`.
    pub fn with_capability(&self, cap: Capability) -> Option<&Arc<dyn DynAgent>> {
        self.all().find(|a| a.capabilities().contains(&cap))
    }

    pub fn has_capability(&self, cap: Capability) -> bool {
        self.with_capability(cap).is_some()
    }

    /// Calls the tool `name` on `image`: within `timeout`, stopped when `cancel` is set. A
    /// reply is the agent's; every other ending is the outcome to report. The loop and the
    /// server both call agents through here.
    pub async fn call(
        &self,
        name: &str,
        caller: Caller,
        image: &Image,
        arguments: serde_json::Value,
        timeout: Duration,
        cancel: &Arc<AtomicBool>,
    ) -> Result<AgentReply, CallOutcome> {
        let agent = self.resolve(name, caller)?;
        let run = agent.call(image, arguments);
        tokio::select! {
            r = tokio::time::timeout(timeout, run) => match r {
                Err(_) => Err(CallOutcome::TimedOut { after: timeout }),
                Ok(Err(e)) => Err(CallOutcome::Failed(e)),
                Ok(Ok(reply)) => Ok(reply),
            },
            _ = wait_cancel(cancel) => Err(CallOutcome::Cancelled),
        }
    }
}

/// Resolves once `flag` is set (polled: agents run on blocking threads that cannot be woken).
pub async fn wait_cancel(flag: &AtomicBool) {
    loop {
        if flag.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a call ended, as the trace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Ok,
    Error,
    Timeout,
    Repeated,
    UnknownTool,
    Cancelled,
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Repeated => "repeated",
            Self::UnknownTool => "unknown_tool",
            Self::Cancelled => "cancelled",
        })
    }
}

/// What one agent call came to.
#[derive(Debug)]
pub enum CallOutcome {
    /// No tool of that name (that the caller may call).
    UnknownTool {
        available: Vec<String>,
    },
    /// The same call was made before; its regions (possibly none) were not read again.
    Repeated {
        earlier: Vec<String>,
    },
    Cancelled,
    TimedOut {
        after: Duration,
    },
    Failed(AgentError),
    /// The agent ran: the ids of the regions it returned (none: it found nothing).
    Found {
        ids: Vec<String>,
    },
}

impl CallOutcome {
    pub fn status(&self) -> CallStatus {
        match self {
            Self::UnknownTool { .. } => CallStatus::UnknownTool,
            Self::Repeated { .. } => CallStatus::Repeated,
            Self::Cancelled => CallStatus::Cancelled,
            Self::TimedOut { .. } => CallStatus::Timeout,
            Self::Failed(_) => CallStatus::Error,
            Self::Found { .. } => CallStatus::Ok,
        }
    }

    /// What the controller reads after calling `agent`. A found outcome's text is the
    /// regions themselves, which only the session can render: `regions` is that rendering.
    pub fn observation(&self, agent: &str, regions: &str) -> String {
        match self {
            Self::UnknownTool { available } => format!(
                "There is no tool named {agent:?}. Available: {}.",
                available.join(", ")
            ),
            Self::Repeated { earlier } if earlier.is_empty() => format!(
                "You already called {agent} with these arguments and it found nothing. Do not \
                 repeat it; answer, or try a different region."
            ),
            Self::Repeated { earlier } => format!(
                "You already called {agent} with these arguments; its results are regions {} \
                 above. Do not repeat it: answer from them.",
                span_of(earlier)
            ),
            Self::Cancelled => "The call was cancelled.".into(),
            Self::TimedOut { after } => format!(
                "{agent} did not finish within {:.0} s and was stopped. Answer from the \
                 evidence you have, or ask for a smaller region.",
                after.as_secs_f64()
            ),
            Self::Failed(AgentError::Arguments { reason, .. }) => format!(
                "Error: the arguments of {agent} are invalid ({reason}). Fix them or call it \
                 without arguments."
            ),
            Self::Failed(e) => format!("Error: {e}"),
            Self::Found { ids } if ids.is_empty() => format!("{agent} found nothing."),
            Self::Found { .. } => regions.to_string(),
        }
    }

    /// The trace's one-line summary.
    pub fn summary(&self, agent: &str) -> String {
        match self {
            Self::Cancelled => "cancelled".into(),
            Self::Failed(e) => crate::error_line(e),
            Self::Found { ids } => format!("{} regions", ids.len()),
            other => other.observation(agent, ""),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_one_status_and_one_observation() {
        let cases = [
            (
                CallOutcome::UnknownTool {
                    available: vec!["ocr".into()],
                },
                CallStatus::UnknownTool,
                "no tool named \"zoom\". Available: ocr.",
            ),
            (
                CallOutcome::Repeated {
                    earlier: vec!["r1".into(), "r2".into(), "r3".into()],
                },
                CallStatus::Repeated,
                "regions r1–r3 above",
            ),
            (
                CallOutcome::Repeated { earlier: vec![] },
                CallStatus::Repeated,
                "found nothing",
            ),
            (CallOutcome::Cancelled, CallStatus::Cancelled, "cancelled"),
            (
                CallOutcome::TimedOut {
                    after: Duration::from_secs(3),
                },
                CallStatus::Timeout,
                "within 3 s",
            ),
            (
                CallOutcome::Failed(AgentError::Arguments {
                    agent: "zoom".into(),
                    reason: "region is inverted".into(),
                }),
                CallStatus::Error,
                "invalid (region is inverted)",
            ),
            (
                CallOutcome::Found { ids: vec![] },
                CallStatus::Ok,
                "zoom found nothing.",
            ),
        ];
        for (outcome, status, says) in cases {
            assert_eq!(outcome.status(), status);
            let text = outcome.observation("zoom", "");
            assert!(text.contains(says), "{text:?} lacks {says:?}");
            // The trace's status string is the serde name, as in traces written before.
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.to_string())
            );
        }
        let found = CallOutcome::Found {
            ids: vec!["r1".into()],
        };
        assert_eq!(
            found.observation("ocr", "r1 [0,0,1,1] \"A\""),
            "r1 [0,0,1,1] \"A\""
        );
        assert_eq!(found.summary("ocr"), "1 regions");
    }
}
