//! The `detect` tool on a closed-vocabulary detector (NanoDet, COCO's 80 classes): what every
//! user has when no Grounding DINO is added.
//!
//! Phrases reach classes through [`Vocabulary`]; a phrase with no class is reported in the
//! output (`vocabulary`), and when no phrase reaches a class the tool returns every object it
//! does know in the image, with a note saying so: a controller asking for "a flag" learns what
//! is there instead of reading an empty list as "there is no flag". Large images are read in
//! overlapping tiles as well as whole, like the other agents.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::nanodet::{self, NanoDet, Normalisation};
use super::vocab::{PhraseMatch, Vocabulary};
use super::{cut_by_tile, round2, tile_layout, DetectArgs, DetectOutput, Detection};
use crate::agents::ToolDefinition;
use crate::agents::{Agent, AgentError, AgentManifest, Capability, Finding, FindingKind};
use crate::models::runtime::{self, SessionOptions};
use crate::models::{ModelSource, Store};
use crate::vision::crop::Rect;
use crate::vision::{BBox, Image};

/// Pipeline options; defaults come from `agents/detect_coco.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CocoOptions {
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub pre_nms: usize,
    pub max_detections: usize,
    pub channels: String,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_value: f32,
    pub tiling: bool,
    pub tile_size: u32,
    pub tile_overlap: u32,
    pub max_tiles: usize,
}

impl Default for CocoOptions {
    fn default() -> Self {
        Self {
            score_threshold: 0.35,
            nms_iou: 0.6,
            pre_nms: 1000,
            max_detections: 100,
            channels: "bgr".into(),
            scale: 1.0,
            mean: [103.53, 116.28, 123.675],
            std: [57.375, 57.12, 58.395],
            pad_value: 0.0,
            tiling: true,
            tile_size: 832,
            tile_overlap: 160,
            max_tiles: 12,
        }
    }
}

impl CocoOptions {
    /// How these options turn pixels into the model's input.
    pub fn normalisation(&self) -> Normalisation {
        Normalisation {
            channels: self.channels.clone(),
            scale: self.scale,
            mean: self.mean,
            std: self.std,
            pad_value: self.pad_value,
        }
    }
}

/// How to load the COCO detection agent.
#[derive(Debug, Clone)]
pub struct CocoConfig {
    pub manifest: AgentManifest,
    pub options: CocoOptions,
    pub session: SessionOptions,
}

impl CocoConfig {
    pub fn embedded() -> Result<Self, AgentError> {
        let manifest = AgentManifest::embedded("detect-coco")?;
        let options = manifest.options()?;
        Ok(Self {
            manifest,
            options,
            session: SessionOptions::default(),
        })
    }
}

struct Inner {
    model: NanoDet,
    vocab: Vocabulary,
    options: CocoOptions,
}

/// The COCO detection agent. Cheap to clone; the model is loaded once.
#[derive(Clone)]
pub struct CocoDetectAgent {
    inner: Arc<Inner>,
    definition: ToolDefinition,
}

impl CocoDetectAgent {
    /// Whether the model is there or can be fetched now. In a user's folder it must be
    /// present; from the store it is fetched if missing, and a failed fetch (no npm, no
    /// network) is a warning: the agent is then not offered, and the error says what to do.
    pub fn obtainable(source: &ModelSource, manifest: &AgentManifest) -> bool {
        crate::agents::model_obtainable(source, manifest, "detect")
    }

    /// Loads NanoDet from `source` (fetching and converting it on first use: this needs npm).
    pub fn load(source: &ModelSource, store: &Store, cfg: CocoConfig) -> Result<Self, AgentError> {
        let _span = tracing::info_span!("detect.coco.load").entered();
        let m = &cfg.manifest;
        let vocab = Vocabulary::from_table(&m.vocabulary, "agents/detect_coco.toml")?;
        let path = source.file(m.bundle()?, m.model_file("model")?)?;
        let env = runtime::environment(store)?;
        let model = NanoDet::open(env, &path, &cfg.session, vocab.classes.len())?;
        Ok(Self {
            definition: m.definition(),
            inner: Arc::new(Inner {
                model,
                vocab,
                options: cfg.options,
            }),
        })
    }

    pub fn options(&self) -> &CocoOptions {
        &self.inner.options
    }

    /// The classes this detector knows.
    pub fn classes(&self) -> &[String] {
        &self.inner.vocab.classes
    }

    /// Finds the objects in `args` in `image`, synchronously.
    pub fn detect(&self, image: &Image, args: &DetectArgs) -> Result<DetectOutput, AgentError> {
        let out = self.inner.detect(image, args);
        runtime::release_freed_memory();
        out
    }
}

impl Inner {
    fn detect(&self, image: &Image, args: &DetectArgs) -> Result<DetectOutput, AgentError> {
        let started = Instant::now();
        let _span = tracing::info_span!(
            "detect.coco.run",
            width = image.width(),
            height = image.height()
        )
        .entered();
        let phrases = args.objects.cleaned();
        if phrases.is_empty() {
            return Err(AgentError::Arguments {
                agent: "detect".into(),
                reason: "no phrases to look for; write them like \"person . sports ball\"".into(),
            });
        }
        let matches = self.vocab.understand(&phrases);
        let mut wanted: Vec<usize> = matches
            .iter()
            .flat_map(|m| m.classes.iter())
            .filter_map(|c| self.vocab.classes.iter().position(|k| k == c))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let (view, offset) = crate::agents::region_view(image, args.region.as_ref(), "detect")?;
        let rgb = view.as_ref().unwrap_or(image.rgb());
        let filter = (!wanted.is_empty()).then_some(wanted.as_slice());
        let mut detections = self.find(rgb, offset, filter)?;
        let unknown: Vec<&PhraseMatch> = matches.iter().filter(|m| m.classes.is_empty()).collect();
        let note = if wanted.is_empty() {
            Some(format!(
                "{} not among the {} kinds of object this detector knows; these are all the \
                 objects it found",
                quote_list(unknown.iter().map(|m| m.phrase.as_str())),
                self.vocab.classes.len()
            ))
        } else if !unknown.is_empty() {
            Some(format!(
                "{} not among the kinds of object this detector knows; no boxes for {}",
                quote_list(unknown.iter().map(|m| m.phrase.as_str())),
                if unknown.len() == 1 { "it" } else { "them" }
            ))
        } else {
            None
        };
        detections.truncate(self.options.max_detections);
        Ok(DetectOutput {
            width: image.width(),
            height: image.height(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            detections,
            vocabulary: Some(matches),
            note,
        })
    }

    /// The whole view, then tiles for a large one; NMS per class over all passes.
    fn find(
        &self,
        rgb: &RgbImage,
        offset: [f32; 2],
        wanted: Option<&[usize]>,
    ) -> Result<Vec<Detection>, AgentError> {
        let o = &self.options;
        let (w, h) = rgb.dimensions();
        let mut found = self.pass(rgb, Rect::full(rgb), offset, wanted)?;
        let size = self.model.size;
        if o.tiling && (w > size * 2 || h > size * 2) {
            let layout = tile_layout(w, h, o.tile_size, o.tile_overlap, o.max_tiles);
            if layout.len() > 1 {
                for (i, tile) in layout.iter().enumerate() {
                    let _s = tracing::debug_span!("detect.coco.tile", index = i).entered();
                    let dets = self.pass(rgb, *tile, offset, wanted)?;
                    found.extend(
                        dets.into_iter()
                            .filter(|d| !cut_by_tile(&d.bbox, *tile, offset, w, h)),
                    );
                }
            }
        }
        let mut kept = super::post::nms(found, o.nms_iou);
        for d in &mut kept {
            d.bbox = round2(d.bbox);
        }
        Ok(kept)
    }

    fn pass(
        &self,
        rgb: &RgbImage,
        rect: Rect,
        offset: [f32; 2],
        wanted: Option<&[usize]>,
    ) -> Result<Vec<Detection>, AgentError> {
        let o = &self.options;
        let m = &self.model;
        let _s = tracing::debug_span!("detect.coco.pass", x = rect.x, y = rect.y).entered();
        let (input, lb) = nanodet::letterbox(rgb, rect, m.size, &o.normalisation());
        let levels = m.run(&input)?;
        let raw = nanodet::decode(
            &levels,
            m.classes,
            m.reg_max,
            m.size as f32,
            o.score_threshold,
            o.pre_nms,
            wanted,
        );
        let (x0, y0) = (offset[0] + rect.x as f32, offset[1] + rect.y as f32);
        Ok(raw
            .into_iter()
            .map(|r| {
                let b = lb.unmap(r.bbox, rect.width as f32, rect.height as f32);
                Detection {
                    phrase: self.vocab.classes[r.class].clone(),
                    score: r.score,
                    bbox: BBox::new(b.x1 + x0, b.y1 + y0, b.x2 + x0, b.y2 + y0),
                }
            })
            .filter(|d| d.bbox.width() > 0.0 && d.bbox.height() > 0.0)
            .collect())
    }
}

fn quote_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.map(|s| format!("{s:?}")).collect();
    match v.len() {
        0 => "nothing asked is".into(),
        1 => format!("{} is", v[0]),
        _ => format!("{} are", v.join(", ")),
    }
}

impl Agent for CocoDetectAgent {
    type Args = DetectArgs;
    type Output = DetectOutput;

    fn name(&self) -> &str {
        &self.definition.name
    }

    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::Objects]
    }

    fn knows(&self, phrase: &str) -> Option<bool> {
        Some(!self.inner.vocab.lookup(phrase).is_empty())
    }

    fn findings(&self, output: &DetectOutput) -> Vec<Finding> {
        output
            .detections
            .iter()
            .map(|d| Finding {
                bbox: d.bbox,
                text: d.phrase.clone(),
                kind: FindingKind::Object,
                score: d.score,
                quad: None,
            })
            .collect()
    }

    async fn run(&self, image: &Image, args: DetectArgs) -> Result<DetectOutput, AgentError> {
        let agent = self.clone();
        let image = image.clone();
        crate::agents::off_async_workers(move || agent.detect(&image, &args))
            .await
            .map_err(|reason| AgentError::Inference {
                agent: "detect".into(),
                reason,
            })?
    }
}
