//! Agent manifests (`agents/*.toml`): model files, thresholds and the tool description.
//!
//! The manifests in the repo are embedded at build time so the binary works anywhere; a user
//! can point at an edited copy at run time to change thresholds or the description a
//! controller sees, without rebuilding.

use std::path::Path;

use serde::Deserialize;

use super::{AgentError, ToolDefinition};

/// Manifests shipped in this build, by agent name.
const EMBEDDED: &[(&str, &str)] = &[
    ("ocr", include_str!("../../agents/ocr.toml")),
    ("detect", include_str!("../../agents/detect.toml")),
    ("detect-coco", include_str!("../../agents/detect_coco.toml")),
    ("colour", include_str!("../../agents/colour.toml")),
    ("layout", include_str!("../../agents/layout.toml")),
];

/// An agent's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentManifest {
    pub name: String,
    pub description: String,
    /// JSON schema of the tool's arguments.
    pub parameters: toml::Table,
    /// Which model files the agent loads: `bundle` plus role = file name.
    pub models: toml::Table,
    /// Pipeline defaults, deserialised by the agent into its own options type.
    #[serde(default)]
    pub options: toml::Table,
    /// The words a closed-vocabulary agent knows (its classes and their synonyms).
    #[serde(default)]
    pub vocabulary: toml::Table,
}

impl AgentManifest {
    /// The manifest embedded in this binary for `name`.
    pub fn embedded(name: &str) -> Result<Self, AgentError> {
        let text = EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| AgentError::Manifest {
                path: format!("agents/{name}.toml"),
                reason: "no such agent in this build".into(),
            })?;
        Self::parse(text, &format!("agents/{name}.toml (embedded)"))
    }

    /// Reads a manifest file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, AgentError> {
        toml::from_str(text).map_err(|e| AgentError::Manifest {
            path: origin.to_string(),
            reason: e.to_string(),
        })
    }

    /// The tool definition a controller is offered.
    pub fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: serde_json::to_value(&self.parameters).unwrap_or_default(),
        }
    }

    /// The bundle the model files belong to.
    pub fn bundle(&self) -> Result<&str, AgentError> {
        self.model_file("bundle")
    }

    /// The file name for a model role (`det`, `rec`, ...).
    pub fn model_file(&self, role: &str) -> Result<&str, AgentError> {
        self.models
            .get(role)
            .and_then(|v| v.as_str())
            .ok_or_else(|| AgentError::Manifest {
                path: format!("agents/{}.toml", self.name),
                reason: format!("[models] has no `{role}` entry"),
            })
    }

    /// The `[options]` table as the agent's typed options (missing keys take defaults).
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, AgentError> {
        toml::Value::Table(self.options.clone())
            .try_into()
            .map_err(|e: toml::de::Error| AgentError::Manifest {
                path: format!("agents/{}.toml", self.name),
                reason: format!("[options]: {e}"),
            })
    }
}
