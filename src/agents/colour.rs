//! The colour agent: the dominant colours of a region, measured from its pixels.
//!
//! No model is involved: [`crate::vision::colour`] clusters the region's pixels in CIELAB,
//! discounts the background (a ring around the box) and shadows, and names each colour. It
//! answers "what colour is the taxi?" once the detector has found the taxi, so a text
//! controller need not guess a colour from words it read.

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, AgentManifest, Capability, Finding, FindingKind, ToolDefinition};
use crate::vision::colour::{dominant_colours, ColourOptions, NamedColour};
use crate::vision::{BBox, Image};

/// Arguments a caller may pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColourArgs {
    /// The box to name the colours of; the whole image when absent.
    #[serde(default)]
    pub region: Option<BBox>,
}

/// The colours of one region, most of it first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColourOutput {
    pub width: u32,
    pub height: u32,
    /// The box measured (the whole image when none was given).
    pub region: BBox,
    pub colours: Vec<NamedColour>,
}

impl ColourOutput {
    /// "yellow (goldenrod), also black", the way a person says it.
    pub fn describe(&self) -> String {
        let mut it = self.colours.iter();
        let Some(first) = it.next() else {
            return "no colour".into();
        };
        let mut s = if first.detail == first.name {
            first.name.clone()
        } else {
            format!("{} ({})", first.name, first.detail)
        };
        let rest: Vec<&str> = it
            .map(|c| c.name.as_str())
            .filter(|n| *n != first.name)
            .collect();
        if !rest.is_empty() {
            s.push_str(&format!(", also {}", rest.join(", ")));
        }
        s
    }
}

/// The colour agent.
#[derive(Debug, Clone)]
pub struct ColourAgent {
    definition: ToolDefinition,
    options: ColourOptions,
}

impl ColourAgent {
    /// The embedded manifest and its options.
    pub fn embedded() -> Result<Self, AgentError> {
        let m = AgentManifest::embedded("colour")?;
        Self::from_manifest(&m)
    }

    pub fn from_manifest(m: &AgentManifest) -> Result<Self, AgentError> {
        Ok(Self {
            definition: m.definition(),
            options: m.options()?,
        })
    }

    /// Names the colours of `args.region` of `image`.
    pub fn colours(&self, image: &Image, args: &ColourArgs) -> Result<ColourOutput, AgentError> {
        let _span = tracing::info_span!("colour.run").entered();
        let (w, h) = (image.width(), image.height());
        let region = args
            .region
            .unwrap_or_else(|| BBox::new(0.0, 0.0, w as f32, h as f32));
        let colours = dominant_colours(image.rgb(), Some(region), &self.options).map_err(|e| {
            AgentError::Arguments {
                agent: "colour".into(),
                reason: e.to_string(),
            }
        })?;
        Ok(ColourOutput {
            width: w,
            height: h,
            region,
            colours,
        })
    }
}

impl Agent for ColourAgent {
    type Args = ColourArgs;
    type Output = ColourOutput;

    fn name(&self) -> &str {
        &self.definition.name
    }

    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::Colour]
    }

    /// One finding: the region, named by its colours.
    fn findings(&self, output: &ColourOutput) -> Vec<Finding> {
        if output.colours.is_empty() {
            return Vec::new();
        }
        vec![Finding {
            bbox: output.region,
            text: output.describe(),
            kind: FindingKind::Object,
            score: output.colours[0].share,
            quad: None,
        }]
    }

    async fn run(&self, image: &Image, args: ColourArgs) -> Result<ColourOutput, AgentError> {
        // Sampling is bounded (max_pixels), so this is quick enough to run inline.
        self.colours(image, &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yellow_box_on_grey_is_yellow() {
        let mut img = image::RgbImage::from_pixel(200, 100, image::Rgb([128, 128, 128]));
        for y in 30..70 {
            for x in 60..140 {
                img.put_pixel(x, y, image::Rgb([247, 181, 0]));
            }
        }
        let agent = ColourAgent::embedded().unwrap();
        let image = Image::from_rgb(img);
        let out = agent
            .colours(
                &image,
                &ColourArgs {
                    region: Some(BBox::new(60.0, 30.0, 140.0, 70.0)),
                },
            )
            .unwrap();
        assert_eq!(out.colours[0].name, "yellow", "{:?}", out.colours);
        assert!(out.describe().starts_with("yellow"));
        let bad = agent.colours(
            &image,
            &ColourArgs {
                region: Some(BBox::new(500.0, 500.0, 600.0, 600.0)),
            },
        );
        assert!(bad.is_err());
    }
}
