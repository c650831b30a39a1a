//! The OCR agent: PP-OCRv5 mobile text detection, text-line orientation and recognition on
//! ONNX Runtime, built for high-resolution inputs.
//!
//! The pipeline is owned here rather than taken from `paddle-ocr-rs`: that crate pins an older
//! `ort`, runs one full-image detection pass and recognises lines one at a time, while p2g
//! needs native-resolution tiling with stitched probability maps, width-bucketed batches, the
//! PP-LCNet orientation model's own preprocessing and CTC alignments (to restore spaces).
//!
//! Stages: [`det`] (global pass + tiles → DB boxes, [`db`]) → rotated crops → [`rec`]
//! (batched recognition, CTC decode) → [`cls`] (lines it calls upside down are read turned
//! too, and the more confident reading wins) → [`order`].

mod cls;
pub mod db;
mod det;
mod order;
pub mod rec;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, AgentManifest, Capability, Finding, FindingKind, ToolDefinition};
use crate::models::runtime::{self, SessionOptions};
use crate::models::{ModelError, ModelSource, Store};
use crate::vision::crop::crop_quad;
use crate::vision::{BBox, Image, Quad};

pub use order::reading_order;

/// Pipeline options; defaults come from `agents/ocr.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OcrOptions {
    pub det_thresh: f32,
    pub box_thresh: f32,
    pub unclip_ratio: f32,
    pub max_candidates: usize,
    pub det_limit_side: u32,
    pub tiling: bool,
    /// Read every tile, not only those where the global pass saw text too small to resolve.
    pub tile_all: bool,
    pub tile_size: u32,
    pub tile_overlap: u32,
    pub max_tiles: usize,
    pub use_orientation: bool,
    pub cls_thresh: f32,
    pub min_confidence: f32,
    pub restore_spaces: bool,
    /// Read a zero among letters as O, an O among digits as zero ([`rec::fix_confusions`]).
    pub fix_confusions: bool,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            det_thresh: 0.3,
            box_thresh: 0.6,
            unclip_ratio: 1.5,
            max_candidates: 3000,
            det_limit_side: 1920,
            tiling: true,
            tile_all: false,
            tile_size: 1280,
            tile_overlap: 192,
            max_tiles: 48,
            use_orientation: true,
            cls_thresh: 0.9,
            min_confidence: 0.5,
            restore_spaces: true,
            fix_confusions: true,
        }
    }
}

impl OcrOptions {
    fn decoding(&self) -> rec::Decoding {
        rec::Decoding {
            restore_spaces: self.restore_spaces,
            fix_confusions: self.fix_confusions,
        }
    }
}

/// Arguments a controller may pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrArgs {
    /// Read only inside this box (image pixels).
    #[serde(default)]
    pub region: Option<BBox>,
}

/// One line of text, in original-image pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextLine {
    pub text: String,
    pub confidence: f32,
    pub bbox: BBox,
    pub quad: Quad,
    /// The line was upside down in the image and was read turned 180°.
    #[serde(default)]
    pub upside_down: bool,
}

/// Everything read from one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrOutput {
    pub width: u32,
    pub height: u32,
    pub elapsed_ms: u64,
    /// Lines in reading order.
    pub lines: Vec<TextLine>,
}

struct Inner {
    det: det::Detector,
    cls: Option<cls::Orientation>,
    rec: rec::Recognizer,
    options: OcrOptions,
}

/// The OCR agent. Cheap to clone; models are loaded once.
#[derive(Clone)]
pub struct OcrAgent {
    inner: Arc<Inner>,
    definition: ToolDefinition,
}

/// How to load the OCR agent.
#[derive(Debug, Clone)]
pub struct OcrConfig {
    pub manifest: AgentManifest,
    pub options: OcrOptions,
    pub session: SessionOptions,
}

impl OcrConfig {
    /// The embedded manifest and its default options.
    pub fn embedded() -> Result<Self, AgentError> {
        let manifest = AgentManifest::embedded("ocr")?;
        let options = manifest.options()?;
        Ok(Self {
            manifest,
            options,
            session: SessionOptions::default(),
        })
    }
}

impl OcrAgent {
    /// Loads the models named by the manifest from `source` (fetching them into `store` on
    /// first use); ONNX Runtime itself always comes from `store`.
    pub fn load(source: &ModelSource, store: &Store, cfg: OcrConfig) -> Result<Self, AgentError> {
        let _span = tracing::info_span!("ocr.load").entered();
        let m = &cfg.manifest;
        let bundle = m.bundle()?;
        let env = runtime::environment(store)?;
        let path = |role: &str| -> Result<std::path::PathBuf, AgentError> {
            Ok(source.file(bundle, m.model_file(role)?)?)
        };
        let keys_path = path("keys")?;
        let keys = read_keys(&keys_path)?;
        let open = |role: &str| -> Result<runtime::OnnxModel, AgentError> {
            Ok(runtime::OnnxModel::open(env, &path(role)?, &cfg.session)?)
        };
        let det = det::Detector::new(open("det")?);
        let cls = if cfg.options.use_orientation {
            Some(cls::Orientation::new(open("cls")?))
        } else {
            None
        };
        let rec_path = path("rec")?;
        let rec_model = runtime::OnnxModel::open(env, &rec_path, &cfg.session)?;
        check_rec_classes(&rec_model, &rec_path, keys.len())?;
        let rec = rec::Recognizer::new(rec_model, keys);
        Ok(Self {
            definition: m.definition(),
            inner: Arc::new(Inner {
                det,
                cls,
                rec,
                options: cfg.options,
            }),
        })
    }

    pub fn options(&self) -> &OcrOptions {
        &self.inner.options
    }

    /// Reads all text in `image` (or in `args.region`), synchronously.
    pub fn read(&self, image: &Image, args: &OcrArgs) -> Result<OcrOutput, AgentError> {
        self.inner.read(image, args)
    }
}

impl Inner {
    fn read(&self, image: &Image, args: &OcrArgs) -> Result<OcrOutput, AgentError> {
        let out = self.read_once(image, args);
        runtime::release_freed_memory();
        out
    }

    fn read_once(&self, image: &Image, args: &OcrArgs) -> Result<OcrOutput, AgentError> {
        let started = Instant::now();
        let _span = tracing::info_span!("ocr.read", width = image.width(), height = image.height())
            .entered();
        let (w, h) = (image.width(), image.height());
        let (view, offset) = super::region_view(image, args.region.as_ref(), "ocr")?;
        let rgb = view.as_ref().unwrap_or(image.rgb());
        let boxes = self.det.detect(rgb, &self.options)?;
        let crops: Vec<image::RgbImage> = boxes.iter().map(|q| crop_quad(rgb, q)).collect();
        let mut texts = self.rec.recognise(&crops, self.options.decoding())?;
        let mut flipped = vec![false; crops.len()];
        if let Some(cls) = &self.cls {
            self.settle_orientation(cls, &crops, &mut texts, &mut flipped)?;
        }
        let mut lines: Vec<TextLine> = boxes
            .iter()
            .zip(texts)
            .zip(flipped)
            .filter(|((_, t), _)| !t.text.is_empty() && t.confidence >= self.options.min_confidence)
            .map(|((b, t), upside_down)| {
                let quad = b.map(|p| [p[0] + offset[0], p[1] + offset[1]]).rounded();
                TextLine {
                    text: t.text,
                    confidence: t.confidence,
                    bbox: quad.bbox(),
                    quad,
                    upside_down,
                }
            })
            .collect();
        let order = reading_order(&lines.iter().map(|l| l.quad).collect::<Vec<_>>());
        let mut sorted = Vec::with_capacity(lines.len());
        let mut taken: Vec<Option<TextLine>> = lines.drain(..).map(Some).collect();
        for i in order {
            if let Some(l) = taken[i].take() {
                sorted.push(l);
            }
        }
        Ok(OcrOutput {
            width: w,
            height: h,
            elapsed_ms: started.elapsed().as_millis() as u64,
            lines: sorted,
        })
    }
}

/// Within this much mean confidence, two readings of a line (as is, turned 180°) are a tie.
const ORIENTATION_TIE: f32 = 0.02;

impl Inner {
    /// Decides which lines are upside down. The classifier alone is not trusted on short
    /// lines: "000" or "9" look alike both ways up, and turning "9" makes it "6" — a silent
    /// wrong answer. So only lines of three or more characters' width are classified; one
    /// it calls upside down is also read turned, and is turned only if that reading is
    /// clearly more confident. When most classified lines are upside down the page is, and
    /// every line (short ones included) is read both ways, ties going with the page.
    fn settle_orientation(
        &self,
        cls: &cls::Orientation,
        crops: &[image::RgbImage],
        texts: &mut [rec::Recognised],
        flipped: &mut [bool],
    ) -> Result<(), AgentError> {
        // On sroie-dev an 18x12 mark read "5" upright and "9" turned, with the classifier
        // sure it was upside down.
        let informative: Vec<usize> = (0..crops.len())
            .filter(|&i| crops[i].width() as f32 >= 2.5 * crops[i].height() as f32)
            .collect();
        let sample: Vec<&image::RgbImage> = informative.iter().map(|&i| &crops[i]).collect();
        let probs = cls.upside_down(&sample)?;
        let flagged: Vec<usize> = informative
            .iter()
            .zip(&probs)
            .filter(|(_, &p)| p > self.options.cls_thresh)
            .map(|(&i, _)| i)
            .collect();
        let page_upside_down = flagged.len() * 2 > informative.len();
        let candidates: Vec<usize> = if page_upside_down {
            (0..crops.len()).collect()
        } else {
            flagged
        };
        if candidates.is_empty() {
            return Ok(());
        }
        let turned: Vec<image::RgbImage> = candidates
            .iter()
            .map(|&i| image::imageops::rotate180(&crops[i]))
            .collect();
        let readings = self.rec.recognise(&turned, self.options.decoding())?;
        for (&i, r) in candidates.iter().zip(readings) {
            let gain = r.confidence - texts[i].confidence;
            if gain > ORIENTATION_TIE || (gain.abs() <= ORIENTATION_TIE && page_upside_down) {
                texts[i] = r;
                flipped[i] = true;
            }
        }
        Ok(())
    }
}

impl Agent for OcrAgent {
    type Args = OcrArgs;
    type Output = OcrOutput;

    fn name(&self) -> &str {
        &self.definition.name
    }

    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::Text]
    }

    fn findings(&self, output: &OcrOutput) -> Vec<Finding> {
        output
            .lines
            .iter()
            .map(|l| Finding {
                bbox: l.bbox,
                text: l.text.clone(),
                kind: FindingKind::Text,
                score: l.confidence,
                quad: Some(l.quad),
            })
            .collect()
    }

    async fn run(&self, image: &Image, args: OcrArgs) -> Result<OcrOutput, AgentError> {
        let inner = Arc::clone(&self.inner);
        let image = image.clone();
        super::off_async_workers(move || inner.read(&image, &args))
            .await
            .map_err(|reason| AgentError::Inference {
                agent: "ocr".into(),
                reason,
            })?
    }
}

/// Reads the recogniser's character list: one entry per output class, class 0 the blank.
fn read_keys(path: &Path) -> Result<Vec<String>, AgentError> {
    let bad = |reason: String| {
        AgentError::Model(ModelError::BadFormat {
            path: path.to_path_buf(),
            kind: "recognition keys file (one character per line)".into(),
            reason,
        })
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let keys: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect::<Vec<_>>();
    // A trailing newline ends the last line; it is not an extra empty key.
    let keys = match keys.split_last() {
        Some((last, rest)) if last.is_empty() => rest.to_vec(),
        _ => keys,
    };
    if keys.len() < 3 {
        return Err(bad(format!("only {} lines", keys.len())));
    }
    Ok(keys)
}

fn check_rec_classes(
    model: &runtime::OnnxModel,
    path: &Path,
    keys: usize,
) -> Result<(), AgentError> {
    let classes = model.output_dims().and_then(|s| s.last().copied());
    match classes {
        Some(c) if c > 0 && c as usize != keys => Err(AgentError::Model(ModelError::BadFormat {
            path: path.to_path_buf(),
            kind: "PP-OCR recognition model".into(),
            reason: format!("it has {c} output classes but the keys file has {keys} lines; they must come from the same model"),
        })),
        _ => Ok(()),
    }
}
