//! The detection agent: open-vocabulary object detection with Grounding DINO on ONNX Runtime.
//!
//! Given phrases ("black mug . red sign"), Grounding DINO returns boxes for each. No package
//! registry ships its weights, so the user exports the official checkpoint to ONNX (README,
//! "Grounding DINO: real weights") and adds the folder with `p2g models add grounding-dino
//! DIR`; without it the agent is not offered to controllers and `p2g detect` says exactly
//! that. The code path is proven on a tiny model with the same interface
//! (`tests/fixtures/grounding_dino/`).
//!
//! Stages: [`text`] (caption, WordPiece tokens, sub-sentence mask) → a global pass over the
//! image resized as the reference does (shorter side 800, longer at most 1333) → for large
//! images, overlapping native-resolution tiles, so objects a few dozen pixels wide in a
//! 4000x3000 photo are seen at the size the model was trained on → [`post`] (thresholds,
//! phrase assignment, per-phrase NMS over all passes).

pub mod coco;
pub mod model;
pub mod nanodet;
pub mod post;
pub mod text;
pub mod vocab;

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, AgentManifest, Capability, Finding, FindingKind, ToolDefinition};
use crate::models::runtime::{self, SessionOptions};
use crate::models::{ModelSource, Store};
use crate::vision::crop::Rect;
use crate::vision::{tiling, BBox, Image};

pub use post::Detection;
use post::{RawOutputs, Thresholds};
use text::{TextEncoder, TextInputs};

/// Pipeline options; defaults come from `agents/detect.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectOptions {
    /// Keep a box whose best token score (sigmoid) is above this.
    pub box_threshold: f32,
    /// Give a box to its best phrase only if that phrase's best token score is above this.
    pub text_threshold: f32,
    /// Per-phrase NMS: drop a box overlapping a better one of the same phrase by more IoU.
    pub nms_iou: f32,
    pub max_detections: usize,
    /// The reference resize: shorter side to this, unless the longer would exceed `max_side`.
    pub short_side: u32,
    pub max_side: u32,
    /// Text tokens per pass (256 for the official model); more phrases take more passes.
    pub max_text_len: usize,
    /// Large images are also read in overlapping tiles of `tile_size` pixels at native
    /// resolution (at most `max_tiles`; beyond that tiles grow), merged with the global pass.
    pub tiling: bool,
    pub tile_size: u32,
    pub tile_overlap: u32,
    pub max_tiles: usize,
    /// Names the export may give its image input, logits and boxes outputs; first found wins.
    pub image_input: Vec<String>,
    pub logits_output: Vec<String>,
    pub boxes_output: Vec<String>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            box_threshold: 0.35,
            text_threshold: 0.25,
            nms_iou: 0.5,
            max_detections: 100,
            short_side: 800,
            max_side: 1333,
            max_text_len: 256,
            tiling: true,
            tile_size: 800,
            tile_overlap: 200,
            max_tiles: 12,
            image_input: names(&["img", "samples", "images"]),
            logits_output: names(&["logits", "pred_logits"]),
            boxes_output: names(&["boxes", "pred_boxes"]),
        }
    }
}

/// What to look for: a list of phrases, or one caption "a . b".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Phrases {
    List(Vec<String>),
    Caption(String),
}

impl Phrases {
    /// The cleaned phrases (see [`text::clean_phrases`]).
    pub fn cleaned(&self) -> Vec<String> {
        match self {
            Phrases::List(v) => text::clean_phrases(v),
            Phrases::Caption(c) => text::split_caption(c),
        }
    }
}

/// Arguments a controller may pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectArgs {
    /// The objects to find, e.g. `["black mug", "red sign"]`.
    pub objects: Phrases,
    /// Look only inside this box (image pixels).
    #[serde(default)]
    pub region: Option<BBox>,
}

impl DetectArgs {
    pub fn new(caption: &str) -> Self {
        Self {
            objects: Phrases::Caption(caption.to_string()),
            region: None,
        }
    }
}

/// Everything found in one image: exactly the `p2g detect --json` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectOutput {
    pub width: u32,
    pub height: u32,
    pub elapsed_ms: u64,
    /// Best first.
    pub detections: Vec<Detection>,
    /// For a closed-vocabulary detector: the classes each phrase reached (none: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vec<vocab::PhraseMatch>>,
    /// What the caller should know about these results (e.g. a phrase no class matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How to load the detection agent.
#[derive(Debug, Clone)]
pub struct DetectConfig {
    pub manifest: AgentManifest,
    pub options: DetectOptions,
    pub session: SessionOptions,
}

impl DetectConfig {
    /// The embedded manifest and its default options.
    pub fn embedded() -> Result<Self, AgentError> {
        let manifest = AgentManifest::embedded("detect")?;
        let options = manifest.options()?;
        Ok(Self {
            manifest,
            options,
            session: SessionOptions::default(),
        })
    }
}

struct Inner {
    model: model::DinoModel,
    text: TextEncoder,
    options: DetectOptions,
}

/// The detection agent. Cheap to clone; the model is loaded once.
#[derive(Clone)]
pub struct DetectAgent {
    inner: Arc<Inner>,
    definition: ToolDefinition,
}

impl DetectAgent {
    /// Whether the model files the manifest names are present in `source` (nothing is
    /// fetched: Grounding DINO is user-supplied). Controllers are offered this agent only then.
    pub fn available(source: &ModelSource, manifest: &AgentManifest) -> bool {
        let (Ok(bundle), Ok(model), Ok(vocab)) = (
            manifest.bundle(),
            manifest.model_file("model"),
            manifest.model_file("vocab"),
        ) else {
            return false;
        };
        let dir = match source {
            ModelSource::Store(store) => store.bundle_dir(bundle),
            ModelSource::Dir(dir) => dir.clone(),
        };
        dir.join(model).is_file() && dir.join(vocab).is_file()
    }

    /// Loads the model named by the manifest from `source`; ONNX Runtime comes from `store`.
    /// Without the files the error says how to supply them.
    pub fn load(
        source: &ModelSource,
        store: &Store,
        cfg: DetectConfig,
    ) -> Result<Self, AgentError> {
        let _span = tracing::info_span!("detect.load").entered();
        let m = &cfg.manifest;
        let bundle = m.bundle()?;
        let model_path = source.file(bundle, m.model_file("model")?)?;
        let vocab_path = source.file(bundle, m.model_file("vocab")?)?;
        let text = TextEncoder::from_vocab(&vocab_path)?;
        let env = runtime::environment(store)?;
        let model = model::DinoModel::open(env, &model_path, &cfg.session, &cfg.options)?;
        Ok(Self {
            definition: m.definition(),
            inner: Arc::new(Inner {
                model,
                text,
                options: cfg.options,
            }),
        })
    }

    pub fn options(&self) -> &DetectOptions {
        &self.inner.options
    }

    /// Finds the objects in `args` in `image`, synchronously.
    pub fn detect(&self, image: &Image, args: &DetectArgs) -> Result<DetectOutput, AgentError> {
        let out = self.inner.detect(image, args);
        runtime::release_freed_memory();
        out
    }
}

/// The size the reference resizes a `w x h` image to (`get_size_with_aspect_ratio` in
/// Grounding DINO's transforms): shorter side `short`, unless the longer side would exceed
/// `max`, then the longer side about `max`.
pub fn target_size(w: u32, h: u32, short: u32, max: u32) -> (u32, u32) {
    let (lo, hi) = (w.min(h) as f64, w.max(h) as f64);
    let mut size = short as f64;
    if hi / lo * size > max as f64 {
        // Python's round(), as the reference uses: halves to even.
        size = (max as f64 * lo / hi).round_ties_even();
    }
    let size = (size as u32).max(1);
    if (w <= h && w == size) || (h <= w && h == size) {
        return (w, h);
    }
    if w < h {
        (size, ((size as f64 * h as f64 / w as f64) as u32).max(1))
    } else {
        (((size as f64 * w as f64 / h as f64) as u32).max(1), size)
    }
}

/// The `rect` of `src` resized to `tw x th` (bilinear with antialiasing, as PIL resizes for
/// the reference) as a planar RGB tensor normalised with ImageNet mean and std.
fn pixels(src: &RgbImage, rect: Rect, tw: u32, th: u32) -> Vec<f32> {
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let owned;
    let view: &RgbImage = if rect == Rect::full(src) && src.dimensions() == (tw, th) {
        src
    } else {
        let crop = image::imageops::crop_imm(src, rect.x, rect.y, rect.width, rect.height);
        owned = if (rect.width, rect.height) == (tw, th) {
            crop.to_image()
        } else {
            image::imageops::resize(&*crop, tw, th, image::imageops::FilterType::Triangle)
        };
        &owned
    };
    let plane = (tw * th) as usize;
    let mut out = vec![0f32; 3 * plane];
    let tables: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]))
        .collect();
    for (i, p) in view.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = tables[c][p.0[c] as usize];
        }
    }
    out
}

impl Inner {
    fn detect(&self, image: &Image, args: &DetectArgs) -> Result<DetectOutput, AgentError> {
        let started = Instant::now();
        let _span =
            tracing::info_span!("detect.run", width = image.width(), height = image.height())
                .entered();
        let phrases = args.objects.cleaned();
        if phrases.is_empty() {
            return Err(AgentError::Arguments {
                agent: "detect".into(),
                reason: "no phrases to look for; write them like \"black mug . red sign\"".into(),
            });
        }
        let texts = self
            .text
            .encode_passes(&phrases, self.options.max_text_len.max(3))?;
        let (view, offset) = super::region_view(image, args.region.as_ref(), "detect")?;
        let rgb = view.as_ref().unwrap_or(image.rgb());
        let (w, h) = rgb.dimensions();
        let o = &self.options;

        let full = Rect::full(rgb);
        let mut found = self.pass(rgb, full, offset, &texts)?;
        let (gw, gh) = self.input_size(w, h);
        if o.tiling && (gw < w || gh < h) {
            let layout = tile_layout(w, h, o.tile_size, o.tile_overlap, o.max_tiles);
            if layout.len() > 1 {
                for (i, tile) in layout.iter().enumerate() {
                    let _s = tracing::debug_span!("detect.tile", index = i).entered();
                    let dets = self.pass(rgb, *tile, offset, &texts)?;
                    found.extend(
                        dets.into_iter()
                            .filter(|d| !cut_by_tile(&d.bbox, *tile, offset, w, h)),
                    );
                }
            }
        }
        let mut detections = post::nms(found, o.nms_iou);
        detections.truncate(o.max_detections);
        for d in &mut detections {
            d.bbox = round2(d.bbox);
        }
        Ok(DetectOutput {
            width: image.width(),
            height: image.height(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            detections,
            vocabulary: None,
            note: None,
        })
    }

    /// The size a `w x h` view is fed to the model at: the export's fixed size, else the
    /// reference resize.
    fn input_size(&self, w: u32, h: u32) -> (u32, u32) {
        let o = &self.options;
        self.model
            .fixed_size()
            .unwrap_or_else(|| target_size(w, h, o.short_side, o.max_side))
    }

    /// One pass over `rect` of `rgb` for every caption; boxes in image pixels.
    fn pass(
        &self,
        rgb: &RgbImage,
        rect: Rect,
        offset: [f32; 2],
        texts: &[(Vec<String>, TextInputs)],
    ) -> Result<Vec<Detection>, AgentError> {
        let o = &self.options;
        let (tw, th) = self
            .model
            .fixed_size()
            .unwrap_or_else(|| target_size(rect.width, rect.height, o.short_side, o.max_side));
        let _s = tracing::debug_span!("detect.pass", x = rect.x, y = rect.y, tw, th).entered();
        let input = pixels(rgb, rect, tw, th);
        let view = [
            offset[0] + rect.x as f32,
            offset[1] + rect.y as f32,
            rect.width as f32,
            rect.height as f32,
        ];
        let thresholds = Thresholds {
            box_threshold: o.box_threshold,
            text_threshold: o.text_threshold,
        };
        let mut out = Vec::new();
        for (phrases, text) in texts {
            let raw = self.model.run(&input, (tw, th), text)?;
            out.extend(post::decode(
                &RawOutputs {
                    logits: &raw.logits,
                    boxes: &raw.boxes,
                    queries: raw.queries,
                    stride: raw.stride,
                },
                text.len(),
                &text.spans,
                phrases,
                thresholds,
                |b| post::place_in(view, b),
            ));
        }
        Ok(out)
    }
}

/// Overlapping tiles of `tile` pixels covering `w x h`; when more than `max_tiles` would be
/// needed, tiles grow (each is then resized down like the global pass, less so).
pub fn tile_layout(w: u32, h: u32, tile: u32, overlap: u32, max_tiles: usize) -> Vec<Rect> {
    let (mut tile, mut overlap) = (tile.max(64), overlap);
    loop {
        let layout = tiling::tiles(w, h, tile, overlap.min(tile / 2));
        if layout.len() <= max_tiles.max(1) {
            return layout.into_iter().map(|t| t.rect).collect();
        }
        tile = tile.saturating_add(tile / 4);
        overlap = overlap.saturating_add(overlap / 4);
    }
}

/// Whether a box found in `tile` touches one of the tile's edges inside the image: the object
/// is probably cut there, and a neighbouring tile or the global pass sees it whole.
fn cut_by_tile(b: &BBox, tile: Rect, offset: [f32; 2], w: u32, h: u32) -> bool {
    let margin = (0.005 * tile.width.max(tile.height) as f32).max(2.0);
    let (x0, y0) = (offset[0] + tile.x as f32, offset[1] + tile.y as f32);
    let (x1, y1) = (x0 + tile.width as f32, y0 + tile.height as f32);
    (tile.x > 0 && b.x1 <= x0 + margin)
        || (tile.y > 0 && b.y1 <= y0 + margin)
        || (tile.x + tile.width < w && b.x2 >= x1 - margin)
        || (tile.y + tile.height < h && b.y2 >= y1 - margin)
}

fn round2(b: BBox) -> BBox {
    let r = |v: f32| (v * 100.0).round() / 100.0;
    BBox::new(r(b.x1), r(b.y1), r(b.x2), r(b.y2))
}

impl Agent for DetectAgent {
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
        super::off_async_workers(move || agent.detect(&image, &args))
            .await
            .map_err(|reason| AgentError::Inference {
                agent: "detect".into(),
                reason,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_follows_the_reference() {
        assert_eq!(target_size(1000, 800, 800, 1333), (1000, 800));
        assert_eq!(target_size(1600, 1200, 800, 1333), (1066, 800));
        // 4000x1000: 800 short would make 3200 long; capped to 1333 -> short 333.
        assert_eq!(target_size(4000, 1000, 800, 1333), (1332, 333));
        assert_eq!(target_size(600, 900, 800, 1333), (800, 1200));
        // 1333 * 1080 / 2160 = 666.5: Python rounds to 666, so the long side stays <= 1333.
        assert_eq!(target_size(1080, 2160, 800, 1333), (666, 1332));
    }

    #[test]
    fn tiles_grow_to_respect_the_cap() {
        let t = tile_layout(4000, 3000, 800, 200, 12);
        assert!(t.len() <= 12 && t.len() > 1);
        assert!(t[0].width > 800);
        assert_eq!(tile_layout(4000, 3000, 800, 200, 100)[0].width, 800);
    }
}
