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
    /// Model roles served by a KServe V2 server instead of run in process: role = the
    /// model's URL (`http://host:8000/v2/models/NAME`).
    #[serde(default)]
    pub endpoints: toml::Table,
    /// Where the manifest came from, for errors.
    #[serde(skip)]
    origin: String,
}

/// The longest tool description a manifest may give: it is sent in every prompt.
const MAX_DESCRIPTION_CHARS: usize = 4000;

impl AgentManifest {
    /// The manifest in effect for `name`: `$P2G_AGENTS_DIR/<name>.toml` when that file
    /// exists (how a user edits thresholds or points a model at a server for every command,
    /// `p2g serve` included), else the one embedded in this binary.
    pub fn embedded(name: &str) -> Result<Self, AgentError> {
        if let Some(dir) = std::env::var_os("P2G_AGENTS_DIR").filter(|d| !d.is_empty()) {
            let path = Path::new(&dir).join(format!("{}.toml", name.replace('-', "_")));
            if path.is_file() {
                return Self::load(&path);
            }
        }
        Self::built_in(name)
    }

    /// The manifest embedded in this binary for `name`.
    pub fn built_in(name: &str) -> Result<Self, AgentError> {
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
        let mut m: Self = toml::from_str(text).map_err(|e| AgentError::Manifest {
            path: origin.to_string(),
            reason: clip(&e.to_string()),
        })?;
        m.origin = origin.to_string();
        let chars = m.description.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(m.error(format!(
                "the description is too long ({chars} characters; at most \
                 {MAX_DESCRIPTION_CHARS}: the controller reads it in every prompt)"
            )));
        }
        for (role, v) in &m.models {
            let Some(file) = v.as_str() else {
                continue;
            };
            // A model is a file of its bundle (or of --model-dir): never a path that leaves it.
            let plain = std::path::Path::new(file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || file.is_empty() || file.contains('/') || file.contains('\\') {
                return Err(m.error(format!(
                    "[models] {role} = {file:?} must be a plain file name (no folders, no '..')"
                )));
            }
        }
        Ok(m)
    }

    /// An error about this manifest, naming the file it came from.
    pub fn error(&self, reason: String) -> AgentError {
        AgentError::Manifest {
            path: self.origin.clone(),
            reason,
        }
    }

    /// Refuses a manifest written for another agent (its tool would be offered under the
    /// wrong name).
    pub fn check_name(&self, agent: &str) -> Result<(), AgentError> {
        if self.name == agent {
            Ok(())
        } else {
            Err(self.error(format!(
                "name = {:?}, but this is the {agent} agent's manifest slot",
                self.name
            )))
        }
    }

    /// The tool definition a controller is offered.
    pub fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: serde_json::to_value(&self.parameters).unwrap_or_default(),
        }
    }

    /// The KServe V2 URL serving the model of `role`, if the manifest names one.
    pub fn endpoint(&self, role: &str) -> Result<Option<&str>, AgentError> {
        match self.endpoints.get(role) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.error(format!("[endpoints] {role} must be a URL string"))),
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
            .ok_or_else(|| self.error(format!("[models] has no `{role}` entry")))
    }

    /// The `[options]` table as the agent's typed options (missing keys take defaults).
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, AgentError> {
        toml::Value::Table(self.options.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                self.error(format!("[options]: {}", clip(&e.to_string())))
            })
    }
}

/// A TOML parser's message on one line and at most 300 characters (it quotes the offending
/// line, which may be megabytes long), saying what its terse recursion error means.
fn clip(s: &str) -> String {
    let one = crate::one_line(s, 300);
    if one.contains("recursion") {
        format!("{one} (the TOML is nested too deeply)")
    } else {
        one
    }
}
