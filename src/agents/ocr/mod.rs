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
//! too, and the more confident reading wins; steep lines are always read both ways) →
//! [`order`]. A [`zoom`] reads a region magnified through the same stages; [`leads`] are the
//! places a reading left for a closer look.

mod cls;
pub mod db;
mod det;
pub mod leads;
mod order;
pub mod rec;
mod steep;
pub mod zoom;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    Agent, AgentError, AgentManifest, Capability, Finding, FindingKind, Lead, ToolDefinition,
};
use crate::models::runtime::{self, SessionOptions};
use crate::models::{ModelError, ModelSource, Store};
use crate::vision::crop::{crop_quad, turns_vertical};
use crate::vision::{BBox, Image, Quad};

pub use order::reading_order;
pub use zoom::{Zoom, ZoomApplied};

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
    /// A page with at least this many lines from the global pass...
    pub tile_document_lines: usize,
    /// ...covering at least this fraction of it is a document...
    pub tile_document_coverage: f32,
    /// ...and when even its small text (the 10th percentile of line heights) is at least this
    /// many global-map pixels tall, no tile is read (0: always consider tiles).
    pub tile_resolved_height: f32,
    pub use_orientation: bool,
    pub cls_thresh: f32,
    /// A line read at least this confidently as it stands is taken as upright without asking
    /// the orientation classifier (unless it is in the page sample, `cls_page_sample`)...
    pub cls_sure_reading: f32,
    /// ...and the page's orientation is decided on its this many longest lines.
    pub cls_page_sample: usize,
    pub min_confidence: f32,
    pub restore_spaces: bool,
    /// Read a zero among letters as O, an O among digits as zero ([`rec::fix_confusions`]).
    pub fix_confusions: bool,
    /// Also read, for leads only, the tiles where the global pass saw nothing text-like...
    pub explore_tiles: bool,
    /// ...when detection found at most this many boxes in the whole image.
    pub explore_max_boxes: usize,
    /// `zoom: "auto"` magnifies text to this height (a box's shorter side, in pixels).
    pub zoom_text_height: f32,
    /// The largest magnification a zoom may ask for...
    pub zoom_max_scale: f32,
    /// ...and the largest `auto` picks.
    pub zoom_auto_max_scale: f32,
    /// A magnified crop has at most this many pixels; the scale is reduced to fit.
    pub zoom_max_pixels: u64,
    /// What `auto` picks where the region shows nothing text-like at all.
    pub zoom_default_scale: f32,
    /// Probability above which a detector map pixel is text-like evidence for a lead.
    pub lead_prob: f32,
    /// Lines read with a lower confidence are leads too (kept or not).
    pub lead_confidence: f32,
    /// Text-like regions smaller than this many map pixels are specks, not leads.
    pub lead_min_area: usize,
    /// At most this many unread-text leads (most text-like first), and as many low-confidence.
    pub max_leads: usize,
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
            tile_document_lines: 15,
            tile_document_coverage: 0.025,
            tile_resolved_height: 10.0,
            use_orientation: true,
            cls_thresh: 0.9,
            cls_sure_reading: 0.95,
            cls_page_sample: 8,
            min_confidence: 0.5,
            restore_spaces: true,
            fix_confusions: true,
            explore_tiles: true,
            explore_max_boxes: 4,
            zoom_text_height: 90.0,
            zoom_max_scale: 4.0,
            zoom_auto_max_scale: 3.0,
            zoom_max_pixels: 8_000_000,
            zoom_default_scale: 2.0,
            lead_prob: 0.15,
            lead_confidence: 0.85,
            lead_min_area: 12,
            max_leads: 32,
        }
    }
}

impl OcrOptions {
    /// Refuses values no image could be read well with (NaN or out-of-range thresholds, a tile
    /// no larger than its overlap, limits that would let one image take all memory): an
    /// edited manifest fails at load, naming the option, instead of reading badly.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} must be between 0 and 1"))
            }
        };
        unit("det_thresh", self.det_thresh)?;
        unit("box_thresh", self.box_thresh)?;
        unit("cls_thresh", self.cls_thresh)?;
        if !(0.0..=1.01).contains(&self.cls_sure_reading) {
            return Err(format!(
                "cls_sure_reading = {} must be between 0 and 1 (or up to 1.01: classify every line)",
                self.cls_sure_reading
            ));
        }
        if self.cls_page_sample == 0 {
            return Err("cls_page_sample must be at least 1".into());
        }
        unit("tile_document_coverage", self.tile_document_coverage)?;
        if !self.tile_resolved_height.is_finite() || self.tile_resolved_height < 0.0 {
            return Err(format!(
                "tile_resolved_height = {} must be a number of pixels >= 0 (0: always consider tiles)",
                self.tile_resolved_height
            ));
        }
        unit("min_confidence", self.min_confidence)?;
        unit("lead_prob", self.lead_prob)?;
        unit("lead_confidence", self.lead_confidence)?;
        let within = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} must be between {lo} and {hi}"))
            }
        };
        within("unclip_ratio", self.unclip_ratio.into(), 0.5, 5.0)?;
        within("max_candidates", self.max_candidates as f64, 1.0, 100_000.0)?;
        within("det_limit_side", self.det_limit_side.into(), 32.0, 8192.0)?;
        within("tile_size", self.tile_size.into(), 64.0, 8192.0)?;
        within("max_tiles", self.max_tiles as f64, 1.0, 1024.0)?;
        within("zoom_text_height", self.zoom_text_height.into(), 8.0, 512.0)?;
        within("zoom_max_scale", self.zoom_max_scale.into(), 1.0, 16.0)?;
        within(
            "zoom_auto_max_scale",
            self.zoom_auto_max_scale.into(),
            1.0,
            16.0,
        )?;
        within(
            "zoom_default_scale",
            self.zoom_default_scale.into(),
            1.0,
            16.0,
        )?;
        within("zoom_max_pixels", self.zoom_max_pixels as f64, 1e4, 1e8)?;
        within("max_leads", self.max_leads as f64, 0.0, 10_000.0)?;
        if self.tile_overlap * 2 >= self.tile_size {
            return Err(format!(
                "tile_overlap = {} must be under half of tile_size = {}",
                self.tile_overlap, self.tile_size
            ));
        }
        Ok(())
    }

    fn decoding(&self) -> rec::Decoding {
        rec::Decoding {
            restore_spaces: self.restore_spaces,
            fix_confusions: self.fix_confusions,
        }
    }

    fn blob_params(&self) -> leads::BlobParams {
        leads::BlobParams {
            prob: self.lead_prob,
            min_area: self.lead_min_area,
            unclip_ratio: self.unclip_ratio,
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
    /// Magnify the region (or the whole image) before reading it: `"auto"` or a factor from
    /// 1 to `zoom_max_scale` ([`zoom`]). Results stay in original-image pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<Zoom>,
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
    /// The zoom the reading was made with, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<ZoomApplied>,
    /// Places worth a closer look ([`leads`]): unread text-like evidence, then lines read with
    /// low confidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leads: Vec<Lead>,
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
        m.check_name("ocr")?;
        cfg.options
            .validate()
            .map_err(|reason| m.error(format!("[options]: {reason}")))?;
        let bundle = m.bundle()?;
        let env = runtime::environment(store)?;
        let path = |role: &str| -> Result<std::path::PathBuf, AgentError> {
            Ok(source.file(bundle, m.model_file(role)?)?)
        };
        let keys_path = path("keys")?;
        let keys = read_keys(&keys_path)?;
        // A role with an endpoint runs on that server; the others load their file.
        let open = |role: &str| -> Result<runtime::OnnxModel, AgentError> {
            match m.endpoint(role)? {
                Some(url) => Ok(runtime::OnnxModel::remote(url)?),
                None => Ok(runtime::OnnxModel::open(env, &path(role)?, &cfg.session)?),
            }
        };
        let det = det::Detector::new(open("det")?);
        let cls = if cfg.options.use_orientation {
            Some(cls::Orientation::new(open("cls")?))
        } else {
            None
        };
        let rec_model = open("rec")?;
        let rec_path = match m.endpoint("rec")? {
            Some(url) => std::path::PathBuf::from(url),
            None => path("rec")?,
        };
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
        if let Some(z) = &args.zoom {
            z.validate(self.options.zoom_max_scale)
                .map_err(|reason| AgentError::Arguments {
                    agent: "ocr".into(),
                    reason,
                })?;
        }
        let (view, offset) = super::region_view(image, args.region.as_ref(), "ocr")?;
        let rgb = view.as_ref().unwrap_or(image.rgb());
        let (pass, zoom) = match args.zoom {
            None => (
                self.pass(rgb, None, &self.options)?
                    .into_image([1.0, 1.0], offset),
                None,
            ),
            Some(z) => {
                let (pass, scale) = self.zoomed(rgb, z)?;
                let region = BBox::new(
                    offset[0],
                    offset[1],
                    offset[0] + rgb.width() as f32,
                    offset[1] + rgb.height() as f32,
                );
                let applied = ZoomApplied {
                    region,
                    scale: (scale[0] * 100.0).round() / 100.0,
                };
                (pass.into_image(scale, offset), Some(applied))
            }
        };
        let leads = pass.leads(&self.options, w as f32, h as f32);
        let order = reading_order(&pass.lines.iter().map(|l| l.quad).collect::<Vec<_>>());
        let mut taken: Vec<Option<TextLine>> = pass.lines.into_iter().map(Some).collect();
        let lines = order.into_iter().filter_map(|i| taken[i].take()).collect();
        Ok(OcrOutput {
            width: w,
            height: h,
            elapsed_ms: started.elapsed().as_millis() as u64,
            lines,
            zoom,
            leads,
        })
    }

    /// Reads `rgb` magnified by `zoom` (capped by `zoom_max_pixels`); returns the reading in
    /// the magnified image's pixels and the factor applied per axis (1 when the region was
    /// read as it is).
    fn zoomed(&self, rgb: &image::RgbImage, zoom: Zoom) -> Result<(Pass, [f32; 2]), AgentError> {
        let o = &self.options;
        let cap = zoom::pixel_cap(rgb.width(), rgb.height(), o.zoom_max_pixels);
        let (wanted, first) = match zoom {
            Zoom::Scale(s) => (s, None),
            Zoom::Auto => {
                let _s = tracing::debug_span!("ocr.zoom.measure").entered();
                let det = self.det.detect(rgb, o)?;
                let height = text_height(&det, o);
                let s = zoom::auto_scale(
                    height,
                    o.zoom_text_height,
                    o.zoom_auto_max_scale.min(o.zoom_max_scale),
                    o.zoom_default_scale,
                );
                tracing::debug!(?height, scale = s, "ocr zoom: text height measured");
                (s, Some(det))
            }
        };
        let scale = wanted.min(cap);
        // Within 5% of 1x, magnifying only blurs.
        if scale <= 1.05 {
            return Ok((self.pass(rgb, first, o)?, [1.0, 1.0]));
        }
        let _s = tracing::debug_span!("ocr.zoom", scale).entered();
        let up = zoom::upsample(rgb, scale);
        let per_axis = [
            up.width() as f32 / rgb.width() as f32,
            up.height() as f32 / rgb.height() as f32,
        ];
        // A zoom is the closer look already: its blind tiles are not explored for leads.
        let closer = OcrOptions {
            explore_tiles: false,
            ..o.clone()
        };
        Ok((self.pass(&up, None, &closer)?, per_axis))
    }

    /// Detection (unless given), recognition and orientation over `rgb`, in its pixels.
    fn pass(
        &self,
        rgb: &image::RgbImage,
        detection: Option<det::Detection>,
        o: &OcrOptions,
    ) -> Result<Pass, AgentError> {
        let mut det = match detection {
            Some(d) => d,
            None => self.det.detect(rgb, o)?,
        };
        det.quads = steep::join_pieces(std::mem::take(&mut det.quads));
        let crops: Vec<image::RgbImage> = det.quads.iter().map(|q| crop_quad(rgb, q)).collect();
        let steep: Vec<bool> = det
            .quads
            .iter()
            .zip(&crops)
            .map(|(q, c)| turns_vertical(q) && c.width() as f32 >= LONG_LINE * c.height() as f32)
            .collect();
        let mut texts = self.rec.recognise(&crops, o.decoding())?;
        let mut flipped = vec![false; crops.len()];
        self.settle_steep(&crops, &steep, &mut texts, &mut flipped)?;
        if let Some(cls) = &self.cls {
            self.settle_orientation(cls, &crops, &steep, &mut texts, &mut flipped)?;
        }
        let (mut lines, mut dropped) = (Vec::new(), Vec::new());
        for ((quad, t), upside_down) in det.quads.iter().zip(texts).zip(flipped) {
            if t.text.is_empty() {
                // Nothing read: its pixels stay unexplained, an unread-text lead.
                continue;
            }
            let line = TextLine {
                text: t.text,
                confidence: t.confidence,
                bbox: quad.bbox(),
                quad: *quad,
                upside_down,
            };
            if line.confidence >= o.min_confidence {
                lines.push(line);
            } else {
                dropped.push(line);
            }
        }
        let _span = tracing::debug_span!("ocr.leads", maps = det.maps.len()).entered();
        let explained: Vec<Quad> = lines.iter().chain(&dropped).map(|l| l.quad).collect();
        let params = o.blob_params();
        let unread = det
            .maps
            .iter()
            .flat_map(|m| leads::blobs(m, &explained, &params))
            .collect();
        Ok(Pass {
            lines,
            dropped,
            unread,
        })
    }
}

/// The height of the text in a detection: the median of its boxes' shorter sides or, when
/// no box came out, of its text-like blobs'; `None` when there is nothing text-like at all.
fn text_height(det: &det::Detection, o: &OcrOptions) -> Option<f32> {
    let mut heights: Vec<f32> = det.quads.iter().map(zoom::line_height).collect();
    if heights.is_empty() {
        let params = o.blob_params();
        heights = det
            .maps
            .iter()
            .flat_map(|m| leads::blobs(m, &[], &params))
            .map(|b| b.text_height)
            .collect();
    }
    zoom::median(&mut heights)
}

/// One reading of an image (a region, perhaps magnified): the lines kept, those dropped for
/// low confidence, and the text-like evidence no line explains.
struct Pass {
    lines: Vec<TextLine>,
    dropped: Vec<TextLine>,
    unread: Vec<leads::Blob>,
}

impl Pass {
    /// This reading in original-image pixels: divided by the magnification `scale` (per
    /// axis), then moved by the region's `offset`.
    fn into_image(self, scale: [f32; 2], offset: [f32; 2]) -> Pass {
        let line = |l: TextLine| {
            let quad = l.quad.map(|p| zoom::to_image(p, scale, offset)).rounded();
            TextLine {
                bbox: quad.bbox(),
                quad,
                ..l
            }
        };
        Pass {
            lines: self.lines.into_iter().map(line).collect(),
            dropped: self.dropped.into_iter().map(line).collect(),
            unread: self
                .unread
                .iter()
                .map(|b| b.shrunk(scale, offset))
                .collect(),
        }
    }

    /// The reading's leads in a `width x height` image: unread text, then lines read with
    /// low confidence, the least confident first.
    fn leads(&self, o: &OcrOptions, width: f32, height: f32) -> Vec<Lead> {
        let mut out = leads::unread_leads(self.unread.clone(), width, height, o.max_leads);
        let mut weak: Vec<&TextLine> = self
            .dropped
            .iter()
            .chain(
                self.lines
                    .iter()
                    .filter(|l| l.confidence < o.lead_confidence),
            )
            .collect();
        weak.sort_by(|a, b| a.confidence.total_cmp(&b.confidence));
        out.extend(
            weak.into_iter()
                .take(o.max_leads)
                .map(|l| leads::low_confidence_lead(&l.quad, &l.text, l.confidence, width, height)),
        );
        out
    }
}

/// A line at least this many times as long as thick is several characters: its orientation
/// can be told from a reading (as the classifier's own "informative" lines). A single tall
/// character is not: an upright "6" in a tall box, turned the other way, reads "9" more
/// confidently (sroie-dev 014 and 038).
const LONG_LINE: f32 = 2.5;

/// Within this much mean confidence, two readings of a line (as is, turned 180°) are a tie.
const ORIENTATION_TIE: f32 = 0.02;

impl Inner {
    /// Reads every steep line ([`turns_vertical`], and [`LONG_LINE`] long) turned 180° as well
    /// and keeps the more confident reading. Such a line's crop is turned 90° counter-clockwise,
    /// upright for text running top to bottom; a word on a flag or a spine may run bottom to
    /// top just as well, and the orientation classifier, trained on horizontal lines, is not
    /// asked. A tie keeps the crop as cut (PaddleOCR's choice).
    fn settle_steep(
        &self,
        crops: &[image::RgbImage],
        steep: &[bool],
        texts: &mut [rec::Recognised],
        flipped: &mut [bool],
    ) -> Result<(), AgentError> {
        let idx: Vec<usize> = (0..crops.len()).filter(|&i| steep[i]).collect();
        if idx.is_empty() {
            return Ok(());
        }
        let _span = tracing::debug_span!("ocr.steep", lines = idx.len()).entered();
        let turned: Vec<image::RgbImage> = idx
            .iter()
            .map(|&i| image::imageops::rotate180(&crops[i]))
            .collect();
        let readings = self.rec.recognise(&turned, self.options.decoding())?;
        for (&i, r) in idx.iter().zip(readings) {
            if tells_direction(&r, &texts[i])
                && r.confidence - texts[i].confidence > ORIENTATION_TIE
            {
                texts[i] = r;
                flipped[i] = true;
            }
        }
        Ok(())
    }

    /// Decides which lines are upside down. The classifier alone is not trusted on short
    /// lines: "000" or "9" look alike both ways up, and turning "9" makes it "6" — a silent
    /// wrong answer. So only lines of three or more characters' width are classified; one
    /// it calls upside down is also read turned, and is turned only if that reading is
    /// clearly more confident. When most of the page sample's lines are upside down the page
    /// is, and every line (short ones included) is read both ways, ties going with the page.
    ///
    /// Not every line needs the classifier (about 4 ms a line here): a line upside down
    /// rarely reads confidently as it stands. Of the long lines read on the 40 sroie-dev
    /// receipts turned 180° (those kept, above `min_confidence`), 1.8% read at 0.95 or more
    /// (symmetric ones: "000", "NO"), against 54% of the upright pages' lines. So the
    /// classifier is asked about the lines read less surely than `cls_sure_reading`, and
    /// about the page sample — the `cls_page_sample` longest lines, whatever their reading —
    /// on which alone the page's orientation is decided (a choice of unsure lines would be
    /// biased toward upside down).
    fn settle_orientation(
        &self,
        cls: &cls::Orientation,
        crops: &[image::RgbImage],
        steep: &[bool],
        texts: &mut [rec::Recognised],
        flipped: &mut [bool],
    ) -> Result<(), AgentError> {
        // On sroie-dev an 18x12 mark read "5" upright and "9" turned, with the classifier
        // sure it was upside down. Steep lines were settled already ([`Self::settle_steep`]).
        let mut informative: Vec<usize> = (0..crops.len())
            .filter(|&i| !steep[i] && crops[i].width() as f32 >= 2.5 * crops[i].height() as f32)
            .collect();
        // Longest first: the page sample is the head.
        informative.sort_by_key(|&i| std::cmp::Reverse(crops[i].width()));
        let sample_len = informative.len().min(self.options.cls_page_sample);
        let asked: Vec<usize> = informative
            .iter()
            .enumerate()
            .filter(|&(n, &i)| {
                n < sample_len || texts[i].confidence < self.options.cls_sure_reading
            })
            .map(|(_, &i)| i)
            .collect();
        let sample: Vec<&image::RgbImage> = asked.iter().map(|&i| &crops[i]).collect();
        let probs = cls.upside_down(&sample)?;
        let upside = |&p: &f32| p > self.options.cls_thresh;
        let flagged: Vec<usize> = asked
            .iter()
            .zip(&probs)
            .filter(|(_, p)| upside(p))
            .map(|(&i, _)| i)
            .collect();
        let sample_flagged = probs[..sample_len].iter().filter(|p| upside(p)).count();
        let page_upside_down = sample_flagged * 2 > sample_len;
        let candidates: Vec<usize> = if page_upside_down {
            (0..crops.len()).filter(|&i| !steep[i]).collect()
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
            let turn = if page_upside_down {
                // With the page, ties included: unless the reading as cut is clearly better.
                gain >= -ORIENTATION_TIE
            } else {
                tells_direction(&r, &texts[i]) && gain > ORIENTATION_TIE
            };
            if turn {
                texts[i] = r;
                flipped[i] = true;
            }
        }
        Ok(())
    }
}

/// Whether two readings of a line (as cut, turned) can say which way up it is. A line of no
/// letter or digit in either ("……", a rule of dashes) reads the same both ways: a confidence
/// gain there is noise, and only a page judged upside down turns it.
fn tells_direction(a: &rec::Recognised, b: &rec::Recognised) -> bool {
    let telling = |t: &str| t.chars().any(char::is_alphanumeric);
    telling(&a.text) || telling(&b.text)
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

    fn leads(&self, output: &OcrOutput) -> Vec<Lead> {
        output.leads.clone()
    }

    /// `{"region": [x1, y1, x2, y2], "zoom": "auto"}`: read the region magnified so its
    /// text reaches the height the models read best.
    fn zoom_arguments(&self, region: &BBox) -> Option<serde_json::Value> {
        serde_json::to_value(OcrArgs {
            region: Some(*region),
            zoom: Some(Zoom::Auto),
        })
        .ok()
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
