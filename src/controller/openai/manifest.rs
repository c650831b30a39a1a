//! Per-model settings of remote controllers (`controllers/*.toml`, embedded at build time):
//! whether the model takes images, whether its server does function calling, and the box
//! convention it writes — which a model learned in training and no prompt changes.
//!
//! A manifest is chosen by the `--model` name (the longest pattern it contains wins), or
//! given with `--controller-manifest FILE`; `--box-convention` overrides its convention.

use std::path::Path;

use serde::Deserialize;

use crate::answer::boxes::BoxConvention;

const EMBEDDED: &[(&str, &str)] = &[
    (
        "default.toml",
        include_str!("../../../controllers/default.toml"),
    ),
    (
        "qwen2.5-vl.toml",
        include_str!("../../../controllers/qwen2.5-vl.toml"),
    ),
    (
        "qwen-vl.toml",
        include_str!("../../../controllers/qwen-vl.toml"),
    ),
    (
        "llava.toml",
        include_str!("../../../controllers/llava.toml"),
    ),
    (
        "shikra.toml",
        include_str!("../../../controllers/shikra.toml"),
    ),
    (
        "ferret.toml",
        include_str!("../../../controllers/ferret.toml"),
    ),
    (
        "minigpt-v2.toml",
        include_str!("../../../controllers/minigpt-v2.toml"),
    ),
    (
        "kosmos-2.toml",
        include_str!("../../../controllers/kosmos-2.toml"),
    ),
    (
        "florence-2.toml",
        include_str!("../../../controllers/florence-2.toml"),
    ),
    (
        "groma.toml",
        include_str!("../../../controllers/groma.toml"),
    ),
];

/// One model family's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Lower-case fragments of model ids this manifest is for (`qwen2.5-vl`).
    #[serde(default)]
    pub models: Vec<String>,
    /// Send image parts (the whole image, crops, Set-of-Mark images).
    #[serde(default)]
    pub images: bool,
    /// Offer the agents through the API's `tools` (function calling); else they are described
    /// in the system message and calls are read from the text.
    #[serde(default = "yes")]
    pub tools: bool,
    #[serde(default = "pixels")]
    pub box_convention: BoxConvention,
}

fn yes() -> bool {
    true
}

fn pixels() -> BoxConvention {
    BoxConvention::Pixels
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
#[error("controller manifest {name}: {reason}")]
pub struct ManifestError {
    pub name: String,
    pub reason: String,
}

impl Manifest {
    pub fn parse(name: &str, text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError {
            name: name.to_string(),
            reason: e.to_string().trim().replace('\n', " "),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&name, &text)
    }

    /// Every embedded manifest.
    pub fn embedded() -> Result<Vec<Self>, ManifestError> {
        EMBEDDED.iter().map(|(n, t)| Self::parse(n, t)).collect()
    }

    /// The embedded manifest for `model`: the one whose longest fragment the id contains,
    /// else `default`.
    pub fn for_model(model: &str) -> Result<Self, ManifestError> {
        let id = model.to_ascii_lowercase();
        let all = Self::embedded()?;
        let best = all
            .iter()
            .filter_map(|m| {
                m.models
                    .iter()
                    .filter(|f| !f.is_empty() && id.contains(f.as_str()))
                    .map(String::len)
                    .max()
                    .map(|len| (len, m))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, m)| m.clone());
        match best {
            Some(m) => Ok(m),
            None => all
                .into_iter()
                .find(|m| m.name == "default")
                .ok_or_else(|| ManifestError {
                    name: "default.toml".into(),
                    reason: "missing from the build".into(),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_manifest_parses_and_models_pick_theirs() {
        let all = Manifest::embedded().unwrap();
        assert_eq!(all.len(), EMBEDDED.len());
        let pick = |m: &str| Manifest::for_model(m).unwrap();
        assert_eq!(
            pick("Qwen/Qwen2.5-VL-7B-Instruct").box_convention,
            BoxConvention::Qwen25Vl
        );
        assert_eq!(pick("qwen2.5vl:7b").name, "qwen2.5-vl");
        assert_eq!(
            pick("Qwen/Qwen-VL-Chat").box_convention,
            BoxConvention::QwenVl
        );
        assert_eq!(
            pick("microsoft/Florence-2-large").box_convention,
            BoxConvention::Florence2
        );
        assert_eq!(pick("llava:13b").box_convention, BoxConvention::Shikra);
        let d = pick("qwen2.5-coder-0.5b-instruct");
        assert_eq!((d.name.as_str(), d.images), ("default", false));
    }

    #[test]
    fn a_broken_manifest_says_where() {
        let e = Manifest::parse("x.toml", "name = \"x\"\nbox_convention = \"inches\"").unwrap_err();
        assert!(e.to_string().contains("x.toml"), "{e}");
        assert!(Manifest::parse("y.toml", "name = \"y\"\nimage = true").is_err());
    }
}
