//! Box conventions of grounding vision-language models.
//!
//! A grounding model writes boxes in whatever convention it was trained on: some write pixels,
//! some fractions, some quantised bins, some special tokens, some JSON. A box read with the wrong
//! convention is silently wrong (a 0-1000 box read as pixels is still "in range" on a large
//! image), so p2g names the convention of every model explicitly and converts every box into
//! pixels of the ORIGINAL image here, in one place. The same table runs the other way when p2g
//! asks a model about a region: [`BoxConvention::format`] writes the box the way that model reads.
//!
//! | name | written as | coordinates | source of the math |
//! |---|---|---|---|
//! | `pixels` | `[x1, y1, x2, y2]`, `(x1,y1,x2,y2)`, `[phrase](x1,y1,x2,y2)` | pixels of the input image | p2g's own |
//! | `shikra` | `[x1,y1,x2,y2;x1,y1,x2,y2]` | 0-1, three decimals, of the input padded to a square | shikras/shikra `mllm/dataset/process_function/box_process_function.py`, `mllm/dataset/utils/transform.py` |
//! | `ferret` | `[x1, y1, x2, y2]` | integers 0-999 (`v / 1000 * size`) | apple/ml-ferret `ferret/eval/model_refcoco.py` |
//! | `minigpt-v2` | `<p>phrase</p> {<x1><y1><x2><y2>}<delim>{...}` | 0-100 (`v / 100 * size`) | Vision-CAIR/MiniGPT-4 `demo_v2.py`, `eval_scripts/eval_ref.py` |
//! | `kosmos-2` | `<phrase>p</phrase><object><patch_index_0044><patch_index_0863></object>` | 32x32 patch grid | huggingface/transformers `models/kosmos2/processing_kosmos2.py` |
//! | `qwen-vl` | `<ref>p</ref><box>(x1,y1),(x2,y2)</box>` | 0-1000 (`v / 1000 * size`) | QwenLM/Qwen-VL `README.md`, `tokenization_qwen.py` |
//! | `qwen2.5-vl` | `[{"bbox_2d": [x1, y1, x2, y2], "label": "p"}]` | pixels of the smart-resized input | QwenLM/Qwen2.5-VL `qwen-vl-utils/src/qwen_vl_utils/vision_process.py`, `cookbooks/spatial_understanding.ipynb` |
//! | `florence-2` | `phrase<loc_x1><loc_y1><loc_x2><loc_y2>` | 1000 bins, `(bin + 0.5) * size / 1000` | huggingface/transformers `models/florence2/processing_florence2.py` |
//! | `region-ids` | `<r12>`, `[r12]`, `r12`, Groma's `<p>p</p><roi><r12></roi>` | ids of regions p2g gave the model | FoundationVision/Groma `groma/constants.py`, `groma/data/datasets/flickr.py` |
//!
//! Parsing never panics on model text: box-like markup that cannot be used goes to
//! [`Parsed::rejected`] with a reason, for the trace.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};

use crate::vision::BBox;

/// How a model writes boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BoxConvention {
    /// `[x1, y1, x2, y2]` / `(x1,y1,x2,y2)` / `[phrase](x1,y1,x2,y2)` in pixels of the image the
    /// model was sent.
    #[default]
    Pixels,
    /// Shikra: `[x1,y1,x2,y2]` normalised 0-1, several boxes joined by `;`.
    Shikra,
    /// Ferret: `[x1, y1, x2, y2]` integers normalised 0-999.
    Ferret,
    /// MiniGPT-v2: `<p>phrase</p> {<x1><y1><x2><y2>}` on 0-100, several boxes joined by `<delim>`.
    #[serde(rename = "minigpt-v2")]
    MiniGptV2,
    /// Kosmos-2: `<phrase>..</phrase><object><patch_index_a><patch_index_b></object>`, 32x32 bins.
    #[serde(rename = "kosmos-2")]
    Kosmos2,
    /// Qwen-VL: `<ref>..</ref><box>(x1,y1),(x2,y2)</box>` on 0-1000.
    QwenVl,
    /// Qwen2.5-VL: JSON `{"bbox_2d": [..], "label": ".."}` in pixels of the smart-resized input.
    #[serde(rename = "qwen2.5-vl")]
    Qwen25Vl,
    /// Florence-2 boxes: a phrase then `<loc_x1><loc_y1><loc_x2><loc_y2>`, 1000 bins.
    #[serde(rename = "florence-2")]
    Florence2,
    /// Groma-style region references `r12` / `<r12>` and p2g's own `[r12]`.
    RegionIds,
}

/// What the boxes are relative to.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The original image's size (width, height): what every parsed box is converted to.
    pub image: (u32, u32),
    /// The size of the image as the model received it (pixels conventions are relative to it;
    /// for Qwen2.5-VL, before its own smart_resize, which `parse` applies itself). A zero
    /// component means "the model got the original image" and `image` is used instead.
    pub input: (u32, u32),
    /// Regions the model was given, by id, in image pixels (for RegionIds).
    pub regions: &'a [(String, BBox)],
}

/// One box found in a model's text.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundBox {
    /// The phrase the box grounds, when the convention names one.
    pub phrase: Option<String>,
    /// In original-image pixels, clamped to the image, x1<x2, y1<y2.
    pub bbox: BBox,
    /// The region id, for RegionIds.
    pub region: Option<String>,
}

/// A model's text with its boxes taken out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// The text as a person reads it: markup removed, phrases kept, whitespace tidied.
    pub text: String,
    pub boxes: Vec<FoundBox>,
    /// Box-like markup that could not be used, each with a short reason (for the trace).
    pub rejected: Vec<String>,
}

/// qwen-vl-utils' `IMAGE_FACTOR`: Qwen2.5-VL sees images in 28-pixel patches (14 px x 2x2 merge).
const QWEN_FACTOR: u64 = 28;
/// qwen-vl-utils' `MIN_PIXELS`.
pub const QWEN25VL_MIN_PIXELS: u32 = 4 * 28 * 28;
/// qwen-vl-utils' `MAX_PIXELS`.
pub const QWEN25VL_MAX_PIXELS: u32 = 16384 * 28 * 28;
/// Kosmos-2's grid: `num_patches_per_side = sqrt(num_patch_index_tokens)` = sqrt(1024).
const KOSMOS_GRID: u32 = 32;

impl BoxConvention {
    pub const ALL: [BoxConvention; 9] = [
        BoxConvention::Pixels,
        BoxConvention::Shikra,
        BoxConvention::Ferret,
        BoxConvention::MiniGptV2,
        BoxConvention::Kosmos2,
        BoxConvention::QwenVl,
        BoxConvention::Qwen25Vl,
        BoxConvention::Florence2,
        BoxConvention::RegionIds,
    ];

    /// The kebab-case name (also the serde name).
    pub fn name(self) -> &'static str {
        match self {
            BoxConvention::Pixels => "pixels",
            BoxConvention::Shikra => "shikra",
            BoxConvention::Ferret => "ferret",
            BoxConvention::MiniGptV2 => "minigpt-v2",
            BoxConvention::Kosmos2 => "kosmos-2",
            BoxConvention::QwenVl => "qwen-vl",
            BoxConvention::Qwen25Vl => "qwen2.5-vl",
            BoxConvention::Florence2 => "florence-2",
            BoxConvention::RegionIds => "region-ids",
        }
    }

    /// Finds the boxes this convention writes in `text` and converts them to original-image
    /// pixels.
    pub fn parse(self, text: &str, frame: &Frame) -> Parsed {
        match self {
            BoxConvention::Pixels => parse_pixels(text, frame),
            BoxConvention::Shikra => parse_shikra(text, frame),
            BoxConvention::Ferret => parse_ferret(text, frame),
            BoxConvention::MiniGptV2 => parse_minigpt(text, frame),
            BoxConvention::Kosmos2 => parse_kosmos(text, frame),
            BoxConvention::QwenVl => parse_qwen_vl(text, frame),
            BoxConvention::Qwen25Vl => parse_qwen25(text, frame),
            BoxConvention::Florence2 => parse_florence(text, frame),
            BoxConvention::RegionIds => parse_regions(text, frame),
        }
    }

    /// The box written the way this convention writes it (for asking a model about a region),
    /// e.g. QwenVl -> `<box>(123,456),(789,999)</box>`. RegionIds writes `[r12]` for
    /// `region: Some("r12")` (or `Some("12")`) and falls back to the Pixels form without an id.
    pub fn format(self, bbox: &BBox, frame: &Frame, region: Option<&str>) -> String {
        let f = fractions(bbox, frame);
        match self {
            BoxConvention::Pixels => format_pixels(f, frame),
            BoxConvention::Shikra => {
                let s = shikra_square(frame);
                let v = [0, 1, 2, 3].map(|i| {
                    let (side, pad) = if i % 2 == 0 {
                        (s.w, s.pad_x)
                    } else {
                        (s.h, s.pad_y)
                    };
                    finite_or_zero((f[i] * side + pad) / s.side).clamp(0.0, 1.0)
                });
                format!("[{:.3},{:.3},{:.3},{:.3}]", v[0], v[1], v[2], v[3])
            }
            BoxConvention::Ferret => {
                let v = f.map(|x| to_int((x * 1000.0).round(), 999));
                format!("[{}, {}, {}, {}]", v[0], v[1], v[2], v[3])
            }
            BoxConvention::MiniGptV2 => {
                let v = f.map(|x| to_int((x * 100.0).round(), 100));
                format!("{{<{}><{}><{}><{}>}}", v[0], v[1], v[2], v[3])
            }
            BoxConvention::Kosmos2 => {
                let (a, b) = kosmos_patches(f);
                format!("<object><patch_index_{a:04}><patch_index_{b:04}></object>")
            }
            BoxConvention::QwenVl => {
                let v = f.map(|x| to_int((x * 1000.0).round(), 1000));
                format!("<box>({},{}),({},{})</box>", v[0], v[1], v[2], v[3])
            }
            BoxConvention::Qwen25Vl => {
                let (rw, rh) = qwen_frame(frame);
                let v = [0, 1, 2, 3].map(|i| {
                    let side = if i % 2 == 0 { rw } else { rh };
                    to_int((f[i] * side).round(), side as i64)
                });
                format!("{{\"bbox_2d\": [{}, {}, {}, {}]}}", v[0], v[1], v[2], v[3])
            }
            BoxConvention::Florence2 => {
                // transformers' Florence2PostProcessor.quantize: floor(v / (size / 1000)).
                let v = f.map(|x| to_int((x * 1000.0).floor(), 999));
                format!("<loc_{}><loc_{}><loc_{}><loc_{}>", v[0], v[1], v[2], v[3])
            }
            BoxConvention::RegionIds => match region {
                Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("[r{id}]")
                }
                Some(id) => format!("[{id}]"),
                None => format_pixels(f, frame),
            },
        }
    }

    /// One sentence telling a model how to write boxes in this convention (goes into a prompt).
    pub fn instruction(self) -> &'static str {
        match self {
            BoxConvention::Pixels => {
                "Give each box right after the words it grounds as [words](x1,y1,x2,y2), in pixels \
                 of the image you were given, (x1,y1) the top-left and (x2,y2) the bottom-right corner."
            }
            BoxConvention::Shikra => {
                "Give each box as [x1,y1,x2,y2] with coordinates between 0 and 1 of the image width \
                 and height and three decimals, e.g. [0.102,0.346,0.488,0.754]."
            }
            BoxConvention::Ferret => {
                "Give each box right after the object it names as [x1, y1, x2, y2] with integer \
                 coordinates from 0 to 999 of the image width and height, e.g. a dog [102, 346, 488, 754]."
            }
            BoxConvention::MiniGptV2 => {
                "Write each grounded object as <p>object</p> {<x1><y1><x2><y2>} with integer \
                 coordinates from 0 to 100 of the image width and height, joining several boxes with <delim>."
            }
            BoxConvention::Kosmos2 => {
                "Write each grounded phrase as <phrase>phrase</phrase><object><patch_index_XXXX>\
                 <patch_index_YYYY></object>, the top-left and bottom-right cells of a 32x32 grid."
            }
            BoxConvention::QwenVl => {
                "Write each grounded object as <ref>object</ref><box>(x1,y1),(x2,y2)</box> with \
                 integer coordinates from 0 to 1000 of the image width and height."
            }
            BoxConvention::Qwen25Vl => {
                "Output the boxes in JSON format as [{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \
                 \"object\"}] in absolute pixel coordinates of the image you see."
            }
            BoxConvention::Florence2 => {
                "Write each phrase followed by its box as <loc_x1><loc_y1><loc_x2><loc_y2>, with \
                 the image width and height each quantised into 1000 bins (0-999)."
            }
            BoxConvention::RegionIds => {
                "Refer to the regions you were given by their ids in square brackets, e.g. [r3], \
                 instead of writing coordinates."
            }
        }
    }
}

impl FromStr for BoxConvention {
    type Err = String;

    /// Accepts the names case-insensitively, ignoring spaces, `-`, `_` and `.`, so that
    /// "qwen2.5vl", "Florence_2" and "minigptv2" all work; "groma" is RegionIds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '_' | '.'))
            .flat_map(char::to_lowercase)
            .collect();
        let found = match key.as_str() {
            "pixels" | "pixel" | "px" | "absolute" => BoxConvention::Pixels,
            "shikra" => BoxConvention::Shikra,
            "ferret" => BoxConvention::Ferret,
            "minigptv2" | "minigpt2" => BoxConvention::MiniGptV2,
            "kosmos2" | "kosmos" => BoxConvention::Kosmos2,
            "qwenvl" => BoxConvention::QwenVl,
            "qwen25vl" | "qwen25" => BoxConvention::Qwen25Vl,
            "florence2" | "florence" => BoxConvention::Florence2,
            "regionids" | "regions" | "regionid" | "groma" => BoxConvention::RegionIds,
            _ => {
                let names: Vec<&str> = BoxConvention::ALL.iter().map(|c| c.name()).collect();
                return Err(format!(
                    "unknown box convention '{}'; valid: {}",
                    clip(s),
                    names.join(", ")
                ));
            }
        };
        Ok(found)
    }
}

impl fmt::Display for BoxConvention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Qwen2.5-VL's `smart_resize` (factor 28): the size `(width, height)` the model really sees for
/// an input of `(w, h)`, as qwen-vl-utils computes it (QwenLM/Qwen2.5-VL
/// `qwen-vl-utils/src/qwen_vl_utils/vision_process.py`; defaults [`QWEN25VL_MIN_PIXELS`],
/// [`QWEN25VL_MAX_PIXELS`]). Python's `round` is round-half-to-even, so this is too. The
/// aspect-ratio limit (200) that makes Python raise is not applied: such an image never reaches
/// the model, and parsing must not fail on it. A zero side gives `(0, 0)`.
pub fn qwen25vl_resized(w: u32, h: u32, min_pixels: u32, max_pixels: u32) -> (u32, u32) {
    if w == 0 || h == 0 {
        return (0, 0);
    }
    let factor = QWEN_FACTOR as f64;
    let (wf, hf) = (f64::from(w), f64::from(h));
    let by = |v: f64, op: fn(f64) -> f64| (op(v / factor) * factor).max(0.0) as u64;
    let mut h_bar = by(hf, f64::round_ties_even).max(QWEN_FACTOR);
    let mut w_bar = by(wf, f64::round_ties_even).max(QWEN_FACTOR);
    let area = h_bar.saturating_mul(w_bar);
    if area > u64::from(max_pixels) {
        let beta = ((hf * wf) / f64::from(max_pixels)).sqrt();
        h_bar = by(hf / beta, f64::floor);
        w_bar = by(wf / beta, f64::floor);
    } else if area < u64::from(min_pixels) {
        let beta = (f64::from(min_pixels) / (hf * wf)).sqrt();
        h_bar = by(hf * beta, f64::ceil);
        w_bar = by(wf * beta, f64::ceil);
    }
    let cap = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    (cap(w_bar), cap(h_bar))
}

// ---------------------------------------------------------------------------------------------
// Geometry shared by parse and format.

fn dims(d: (u32, u32)) -> (f64, f64) {
    (f64::from(d.0), f64::from(d.1))
}

/// The size the model was sent; the original's when the caller did not say.
fn input_dims(frame: &Frame) -> (u32, u32) {
    if frame.input.0 > 0 && frame.input.1 > 0 {
        frame.input
    } else {
        frame.image
    }
}

/// Qwen2.5-VL's coordinate frame: the input after qwen-vl-utils' default smart_resize.
fn qwen_frame(frame: &Frame) -> (f64, f64) {
    let (w, h) = input_dims(frame);
    dims(qwen25vl_resized(
        w,
        h,
        QWEN25VL_MIN_PIXELS,
        QWEN25VL_MAX_PIXELS,
    ))
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// A box (image pixels) as ordered fractions of the image, clamped to 0..1.
fn fractions(b: &BBox, frame: &Frame) -> [f64; 4] {
    let (w, h) = dims(frame.image);
    let f = |v: f32, side: f64| finite_or_zero(f64::from(v) / side).clamp(0.0, 1.0);
    let (x1, x2) = (f(b.x1, w), f(b.x2, w));
    let (y1, y2) = (f(b.y1, h), f(b.y2, h));
    [x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)]
}

fn to_int(v: f64, max: i64) -> i64 {
    // `as` saturates and maps NaN to 0, so this cannot panic or wrap.
    (v as i64).clamp(0, max)
}

fn format_pixels(f: [f64; 4], frame: &Frame) -> String {
    let (w, h) = dims(input_dims(frame));
    let v = [f[0] * w, f[1] * h, f[2] * w, f[3] * h].map(|x| x.round() as i64);
    format!("[{}, {}, {}, {}]", v[0], v[1], v[2], v[3])
}

/// Shikra's `Expand2square` transform (`mllm/dataset/utils/transform.py`, on in
/// `config/_base_/model/shikra.py`): the input is pasted into a square of side max(w, h) at
/// ((side - w) // 2, (side - h) // 2), and boxes are normalised by that square, not the image.
struct Square {
    w: f64,
    h: f64,
    side: f64,
    pad_x: f64,
    pad_y: f64,
}

fn shikra_square(frame: &Frame) -> Square {
    let (w, h) = dims(input_dims(frame));
    let side = w.max(h);
    Square {
        w,
        h,
        side,
        pad_x: ((side - w) / 2.0).floor(),
        pad_y: ((side - h) / 2.0).floor(),
    }
}

/// transformers' `coordinate_to_patch_index` for a box in image fractions.
fn kosmos_patches(f: [f64; 4]) -> (i64, i64) {
    let n = f64::from(KOSMOS_GRID);
    let last = i64::from(KOSMOS_GRID) - 1;
    let ul_x = to_int((f[0] * n).floor(), last);
    let ul_y = to_int((f[1] * n).floor(), last);
    let lr_x = to_int((f[2] * n - 1.0).ceil(), last);
    let lr_y = to_int((f[3] * n - 1.0).ceil(), last);
    let grid = i64::from(KOSMOS_GRID);
    (ul_y * grid + ul_x, lr_y * grid + lr_x)
}

/// transformers' `patch_index_to_coordinate` (copied there from unilm's kosmos-2 demo): image
/// fractions of the box spanned by two cells of the 32x32 grid. A box within one row or column
/// covers whole cells; otherwise it runs between the two cell centres.
fn kosmos_coords(ul: u32, lr: u32) -> [f64; 4] {
    let cell = 1.0 / f64::from(KOSMOS_GRID);
    let (ul_x, ul_y) = (f64::from(ul % KOSMOS_GRID), f64::from(ul / KOSMOS_GRID));
    let (lr_x, lr_y) = (f64::from(lr % KOSMOS_GRID), f64::from(lr / KOSMOS_GRID));
    if ul == lr || ul_x == lr_x || ul_y == lr_y {
        [
            ul_x * cell,
            ul_y * cell,
            lr_x * cell + cell,
            lr_y * cell + cell,
        ]
    } else {
        let half = cell / 2.0;
        [
            ul_x * cell + half,
            ul_y * cell + half,
            lr_x * cell + half,
            lr_y * cell + half,
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Building a `Parsed`.

/// Marks where markup was taken out, so that tidying can drop the space it leaves before
/// punctuation ("a dog [1,2,3,4]." reads "a dog.") without touching the model's own spacing.
const SOFT: char = '\u{1}';
/// A 1 MB garbage answer can hold 100k broken boxes; the trace needs the first few.
const MAX_REJECTED: usize = 200;

struct Out {
    image: (f64, f64),
    text: String,
    boxes: Vec<FoundBox>,
    rejected: Vec<String>,
    dropped: usize,
}

impl Out {
    fn new(frame: &Frame, capacity: usize) -> Self {
        Out {
            image: dims(frame.image),
            text: String::with_capacity(capacity),
            boxes: Vec::new(),
            rejected: Vec::new(),
            dropped: 0,
        }
    }

    /// Keeps model text; true when it held more than whitespace.
    fn keep(&mut self, s: &str) -> bool {
        let mut any = false;
        for c in s.chars().filter(|&c| c != SOFT) {
            any |= !c.is_whitespace();
            self.text.push(c);
        }
        any
    }

    fn soft(&mut self) {
        self.text.push(SOFT);
    }

    fn reject(&mut self, markup: &str, why: &str) {
        if self.rejected.len() < MAX_REJECTED {
            self.rejected.push(format!("{}: {why}", clip(markup)));
        } else {
            self.dropped += 1;
        }
    }

    /// A box in image pixels, checked: swapped when inverted, clamped to the image.
    fn to_image(&self, px: [f64; 4]) -> Result<BBox, String> {
        if px.iter().any(|v| !v.is_finite()) {
            return Err("not a finite number".into());
        }
        let (w, h) = self.image;
        if !(w > 0.0 && h > 0.0) {
            return Err("the frame's image size is zero".into());
        }
        let [x1, y1, x2, y2] = px;
        let (x1, x2) = (x1.min(x2), x1.max(x2));
        let (y1, y2) = (y1.min(y2), y1.max(y2));
        if x2 <= x1 || y2 <= y1 {
            return Err("zero area".into());
        }
        let b = BBox::new(
            x1.clamp(0.0, w) as f32,
            y1.clamp(0.0, h) as f32,
            x2.clamp(0.0, w) as f32,
            y2.clamp(0.0, h) as f32,
        );
        if b.x2 > b.x1 && b.y2 > b.y1 {
            Ok(b)
        } else {
            Err("outside the image".into())
        }
    }

    /// A box in fractions of the image (0..1 on both axes).
    fn frac_to_image(&self, f: [f64; 4]) -> Result<BBox, String> {
        let (w, h) = self.image;
        self.to_image([f[0] * w, f[1] * h, f[2] * w, f[3] * h])
    }

    fn push(&mut self, bbox: BBox, phrase: Option<&str>, region: Option<&str>) {
        let phrase = phrase.map(clean_phrase).filter(|p| !p.is_empty());
        let region = region.map(str::to_string);
        self.boxes.push(FoundBox {
            phrase,
            bbox,
            region,
        });
    }

    /// Pushes the box or records why not; true when pushed.
    fn add(&mut self, markup: &str, r: Result<BBox, String>, phrase: Option<&str>) -> bool {
        match r {
            Ok(b) => {
                self.push(b, phrase, None);
                true
            }
            Err(why) => {
                self.reject(markup, &why);
                false
            }
        }
    }

    fn finish(mut self) -> Parsed {
        if self.dropped > 0 {
            self.rejected
                .push(format!("... and {} more rejected", self.dropped));
        }
        Parsed {
            text: tidy(&self.text),
            boxes: self.boxes,
            rejected: self.rejected,
        }
    }
}

fn clean_phrase(p: &str) -> String {
    let p: String = p.chars().filter(|&c| c != SOFT).collect();
    p.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Short, char-safe excerpt of model text for messages.
fn clip(s: &str) -> String {
    const MAX: usize = 60;
    let s = s.trim();
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push('…');
    out
}

fn is_closing(c: char) -> bool {
    matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | ')')
}

/// Collapses runs of blanks to one space, keeps at most one empty line, trims, and drops the
/// space a removed piece of markup left before punctuation. Chat special tokens
/// (`<|endoftext|>`, `<|im_end|>`) are markup too.
fn tidy(s: &str) -> String {
    let s = match SPECIAL_TOKEN.get() {
        Some(re) => re.replace_all(s, "\u{1}"),
        None => std::borrow::Cow::Borrowed(s),
    };
    let mut out = String::with_capacity(s.len());
    let (mut blank, mut soft, mut newlines) = (false, false, 0usize);
    for c in s.chars() {
        if c == SOFT {
            soft = true;
        } else if c == '\n' {
            newlines += 1;
            (blank, soft) = (false, false);
        } else if c.is_whitespace() {
            blank = true;
        } else {
            if newlines > 0 && !out.is_empty() {
                out.push_str(if newlines > 1 { "\n\n" } else { "\n" });
            } else if (blank || soft) && !out.is_empty() && !(soft && is_closing(c)) {
                out.push(' ');
            }
            (blank, soft, newlines) = (false, false, 0);
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Numbers.

fn fmt_num(v: f64) -> String {
    if v.abs() < 1e9 {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

fn number(s: &str) -> Result<f64, String> {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("'{}' is not a finite number", clip(t))),
        Err(_) => Err(format!("non-numeric value '{}'", clip(t))),
    }
}

fn four<'a>(items: impl Iterator<Item = &'a str>) -> Result<[f64; 4], String> {
    let v = items.map(number).collect::<Result<Vec<f64>, String>>()?;
    <[f64; 4]>::try_from(v.as_slice()).map_err(|_| format!("expected 4 numbers, got {}", v.len()))
}

/// Checks x values against 0..=max_x and y values against 0..=max_y.
fn in_range(v: &[f64; 4], max_x: f64, max_y: f64, unit: &str) -> Result<(), String> {
    for (i, &x) in v.iter().enumerate() {
        let max = if i % 2 == 0 { max_x } else { max_y };
        if !(0.0..=max).contains(&x) {
            let axis = if i % 2 == 0 { "x" } else { "y" };
            return Err(format!(
                "out of range: {axis} = {} not in 0..={} {unit}",
                fmt_num(x),
                fmt_num(max)
            ));
        }
    }
    Ok(())
}

/// A bin or patch index: an integer in 0..=max.
fn index(s: &str, max: u32, what: &str) -> Result<u32, String> {
    let v = number(s)?;
    if v.fract() != 0.0 {
        return Err(format!("{what} must be an integer, got {}", fmt_num(v)));
    }
    if !(0.0..=f64::from(max)).contains(&v) {
        return Err(format!(
            "out of range: {what} {} not in 0..={max}",
            fmt_num(v)
        ));
    }
    Ok(v as u32)
}

// ---------------------------------------------------------------------------------------------
// Patterns, compiled once. A pattern that failed to compile (a bug the tests catch) matches
// nothing rather than panicking on a model's answer. None of them backtracks: the regex crate
// is linear in the text, which matters for a 1 MB runaway answer.

struct Pat {
    src: &'static str,
    cell: OnceLock<Option<Regex>>,
}

impl Pat {
    const fn new(src: &'static str) -> Self {
        Pat {
            src,
            cell: OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&Regex> {
        self.cell.get_or_init(|| Regex::new(self.src).ok()).as_ref()
    }

    fn caps<'t>(&'static self, text: &'t str) -> impl Iterator<Item = Captures<'t>> + 't {
        self.get()
            .into_iter()
            .flat_map(move |re| re.captures_iter(text))
    }

    fn first<'t>(&self, text: &'t str) -> Option<Captures<'t>> {
        self.get().and_then(|re| re.captures(text))
    }
}

/// A number as models write one, including the NaN/inf spellings so they are reported rather
/// than silently skipped.
macro_rules! num {
    () => {
        r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|(?i:[-+]?(?:nan|inf(?:inity)?)))"
    };
}
/// Four numbers separated by commas.
macro_rules! four_nums {
    () => {
        concat!(
            num!(),
            r"\s*,\s*",
            num!(),
            r"\s*,\s*",
            num!(),
            r"\s*,\s*",
            num!()
        )
    };
}

static SPECIAL_TOKEN: Pat = Pat::new(r"<\|[A-Za-z0-9_]{1,64}\|>");
static PIXELS: Pat = Pat::new(concat!(
    r"\[(?P<ph>[^\[\]\n]*)\]\(\s*(?P<l>",
    four_nums!(),
    r")\s*\)|\[\s*(?P<b>",
    four_nums!(),
    r")\s*\]|\(\s*(?P<p>",
    four_nums!(),
    r")\s*\)"
));
static SHIKRA: Pat = Pat::new(concat!(
    r"\[\s*(?P<l>",
    four_nums!(),
    r"(?:\s*;\s*",
    four_nums!(),
    r")*)\s*\]"
));
static FERRET: Pat = Pat::new(concat!(r"\[\s*(?P<l>", four_nums!(), r")\s*\]"));
static MINIGPT: Pat = Pat::new(
    r"<p>(?P<ph>[^<]*)</p>|\{(?P<b>(?:\s*<[^<>{}]*>)+)\s*\}|(?P<open>\{(?:\s*<[^<>{}]*>)+)|<delim>|</?p>",
);
static ANGLE_VALUE: Pat = Pat::new(r"<([^<>]*)>");
static KOSMOS: Pat = Pat::new(
    r"<phrase>|</phrase>|<object>|</object>|<patch_index_(?P<idx>[^<>]*)>|</delimiter_of_multi_objects/>|<grounding>",
);
static QWEN_VL: Pat = Pat::new(
    r"<ref>(?P<ref>[^<]*)</ref>|<box>(?P<box>[^<]*)</box>|(?P<open><box>[\s\d.,()+-]*)|</?ref>|</box>",
);
static QWEN_VL_BOX: Pat = Pat::new(concat!(
    r"^\s*\(\s*(?P<a>",
    num!(),
    r")\s*,\s*(?P<b>",
    num!(),
    r")\s*\)\s*,\s*\(\s*(?P<c>",
    num!(),
    r")\s*,\s*(?P<d>",
    num!(),
    r")\s*\)\s*$"
));
static FENCE: Pat = Pat::new(r"(?s)```[A-Za-z0-9_-]*[ \t]*\r?\n?(?P<body>.*?)```");
static FENCE_MARK: Pat = Pat::new(r"```[A-Za-z0-9_-]*");
static QWEN_OBJECT: Pat = Pat::new(r#"\{[^{}]*["']bbox_2d["'][^{}]*\}"#);
static QWEN_BBOX: Pat = Pat::new(r#"["']bbox_2d["']\s*:\s*\[(?P<v>[^\[\]]*)\]"#);
static QWEN_LABEL: Pat =
    Pat::new(r#"["']label["']\s*:\s*(?:"(?P<d>(?:[^"\\]|\\.)*)"|'(?P<s>(?:[^'\\]|\\.)*)')"#);
static FLORENCE_RUN: Pat = Pat::new(r"(?:<loc_[^<>]*>)+");
static FLORENCE_LOC: Pat = Pat::new(r"<loc_([^<>]*)>");
static FLORENCE_SPECIAL: Pat = Pat::new(r"</?s>|<pad>|<unk>");
static ANY_TAG: Pat = Pat::new(r"<[^<>]*>");
static REGION: Pat = Pat::new(
    r"<p>(?P<ph>[^<]*)</p>|<r(?P<a>\d{1,9})>|\[r(?P<b>\d{1,9})\]|(?-u:\b)r(?P<c>\d{1,9})(?-u:\b)|</?roi>|</?p>",
);

#[cfg(test)]
static ALL_PATS: [&Pat; 19] = [
    &SPECIAL_TOKEN,
    &PIXELS,
    &SHIKRA,
    &FERRET,
    &MINIGPT,
    &ANGLE_VALUE,
    &KOSMOS,
    &QWEN_VL,
    &QWEN_VL_BOX,
    &FENCE,
    &FENCE_MARK,
    &QWEN_OBJECT,
    &QWEN_BBOX,
    &QWEN_LABEL,
    &FLORENCE_RUN,
    &FLORENCE_LOC,
    &FLORENCE_SPECIAL,
    &ANY_TAG,
    &REGION,
];

// ---------------------------------------------------------------------------------------------
// Parsers.

/// Walks the matches of `pat`, keeping the text between them and handing `on_match` each match
/// (which decides what, if anything, of the match stays in the text).
fn scan<'t>(
    pat: &'static Pat,
    text: &'t str,
    out: &mut Out,
    mut on_match: impl FnMut(&Captures<'t>, &mut Out),
) {
    let mut last = 0;
    for caps in pat.caps(text) {
        let Some(m) = caps.get(0) else { continue };
        out.keep(text.get(last..m.start()).unwrap_or(""));
        on_match(&caps, out);
        last = m.end();
    }
    out.keep(text.get(last..).unwrap_or(""));
}

fn group<'t>(caps: &Captures<'t>, name: &str) -> Option<&'t str> {
    caps.name(name).map(|m| m.as_str())
}

fn whole<'t>(caps: &Captures<'t>) -> &'t str {
    caps.get(0).map_or("", |m| m.as_str())
}

/// p2g's own forms: `[phrase](x1,y1,x2,y2)`, `[x1, y1, x2, y2]`, `(x1,y1,x2,y2)` in input
/// pixels. A bare bracket of four numbers that is not a usable box (a list of years, say) may be
/// prose, so it stays in the text; the link form is always markup.
fn parse_pixels(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let (iw, ih) = dims(input_dims(frame));
    let (w, h) = dims(frame.image);
    scan(&PIXELS, text, &mut out, |caps, out| {
        let markup = whole(caps);
        let phrase = group(caps, "ph");
        let list = group(caps, "l").or(group(caps, "b")).or(group(caps, "p"));
        let r = four(list.unwrap_or("").split(',')).and_then(|v| {
            in_range(&v, iw, ih, "input pixels")?;
            let (sx, sy) = (w / iw, h / ih);
            out.to_image([v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy])
        });
        let ok = out.add(markup, r, phrase);
        match phrase {
            Some(p) => {
                out.keep(p);
                out.soft();
            }
            None if ok => out.soft(),
            None => {
                out.keep(markup);
            }
        }
    });
    out.finish()
}

/// Shikra (`PlainBoxFormatter`): `[x1,y1,x2,y2;x1,y1,x2,y2]`, three decimals, 0-1 of the
/// square-padded input. Like Pixels, a bracket with no usable box stays in the text.
fn parse_shikra(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let sq = shikra_square(frame);
    scan(&SHIKRA, text, &mut out, |caps, out| {
        let mut used = 0;
        for b in group(caps, "l").unwrap_or("").split(';') {
            let r = four(b.split(',')).and_then(|v| {
                in_range(&v, 1.0, 1.0, "(Shikra writes fractions of the image)")?;
                if sq.side <= 0.0 {
                    return Err("the frame's input size is zero".into());
                }
                let f = [0, 1, 2, 3].map(|i| {
                    let (size, pad) = if i % 2 == 0 {
                        (sq.w, sq.pad_x)
                    } else {
                        (sq.h, sq.pad_y)
                    };
                    (v[i] * sq.side - pad) / size
                });
                out.frac_to_image(f)
            });
            used += usize::from(out.add(b, r, None));
        }
        if used > 0 {
            out.soft();
        } else {
            out.keep(whole(caps));
        }
    });
    out.finish()
}

/// Ferret: `[x1, y1, x2, y2]`, integers 0-999 of the image; Ferret's own decoder
/// (`resize_bbox`) multiplies by size / 1000. Fractions are refused: they are Shikra-style boxes
/// that would land in the top-left corner.
fn parse_ferret(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    scan(&FERRET, text, &mut out, |caps, out| {
        let markup = whole(caps);
        let r = four(group(caps, "l").unwrap_or("").split(',')).and_then(|v| {
            if v.iter().any(|x| x.fract() != 0.0) {
                return Err("Ferret writes integers 0-999; this looks like a 0-1 box".into());
            }
            in_range(&v, 999.0, 999.0, "(Ferret's 0-999 grid)")?;
            out.frac_to_image(v.map(|x| x / 1000.0))
        });
        if out.add(markup, r, None) {
            out.soft();
        } else {
            out.keep(markup);
        }
    });
    out.finish()
}

/// MiniGPT-v2: `<p>phrase</p> {<x1><y1><x2><y2>}<delim>{...}` on 0-100 of the image
/// (`demo_v2.py` divides by `bounding_box_size = 100`; `eval_ref.py` by `res = 100`).
fn parse_minigpt(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let mut phrase: Option<&str> = None;
    let mut last = 0;
    for caps in MINIGPT.caps(text) {
        let Some(m) = caps.get(0) else { continue };
        if out.keep(text.get(last..m.start()).unwrap_or("")) {
            phrase = None;
        }
        last = m.end();
        out.soft();
        if let Some(p) = group(&caps, "ph") {
            out.keep(p);
            out.soft();
            phrase = Some(p);
        } else if let Some(inner) = group(&caps, "b") {
            let values = ANGLE_VALUE
                .caps(inner)
                .filter_map(|c| c.get(1).map(|g| g.as_str()));
            let r = four(values).and_then(|v| {
                in_range(&v, 100.0, 100.0, "(MiniGPT-v2's 0-100 grid)")?;
                out.frac_to_image(v.map(|x| x / 100.0))
            });
            out.add(m.as_str(), r, phrase);
        } else if caps.name("open").is_some() {
            out.reject(m.as_str(), "unclosed {<..>} box");
        }
    }
    out.keep(text.get(last..).unwrap_or(""));
    out.finish()
}

/// Qwen-VL: `<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`, several `<box>`es may follow one
/// `<ref>`; 0-1000 of the image (`draw_bbox_on_latest_picture`: `x / 1000 * w`). The README says
/// [0, 1000); 1000 is the image edge and harmless, so it is accepted.
fn parse_qwen_vl(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let mut phrase: Option<&str> = None;
    let mut last = 0;
    for caps in QWEN_VL.caps(text) {
        let Some(m) = caps.get(0) else { continue };
        if out.keep(text.get(last..m.start()).unwrap_or("")) {
            phrase = None;
        }
        last = m.end();
        out.soft();
        if let Some(r) = group(&caps, "ref") {
            out.keep(r);
            out.soft();
            phrase = Some(r);
        } else if let Some(inner) = group(&caps, "box") {
            let r = match QWEN_VL_BOX.first(inner) {
                Some(c) => four(
                    ["a", "b", "c", "d"]
                        .iter()
                        .map(|k| group(&c, k).unwrap_or("")),
                )
                .and_then(|v| {
                    in_range(&v, 1000.0, 1000.0, "(Qwen-VL's 0-1000 grid)")?;
                    out.frac_to_image(v.map(|x| x / 1000.0))
                }),
                None => Err("malformed <box>: expected (x1,y1),(x2,y2)".into()),
            };
            out.add(m.as_str(), r, phrase);
        } else if caps.name("open").is_some() {
            out.reject(m.as_str(), "unclosed <box>");
        }
    }
    out.keep(text.get(last..).unwrap_or(""));
    out.finish()
}

/// Florence-2: `phrase<loc_x1><loc_y1><loc_x2><loc_y2>` (several boxes may follow one phrase),
/// 1000 bins dequantised to bin centres, `(bin + 0.5) * size / 1000`
/// (`Florence2PostProcessor.dequantize`). The phrase is the text back to the previous box or the
/// start. Quad boxes (`<OCR_WITH_REGION>`, 8 locs) are not told apart from two boxes.
fn parse_florence(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let mut last = 0;
    for run in FLORENCE_RUN
        .get()
        .into_iter()
        .flat_map(|re| re.find_iter(text))
    {
        let phrase = florence_gap(text.get(last..run.start()).unwrap_or(""), &mut out);
        last = run.end();
        let bins: Vec<&str> = FLORENCE_LOC
            .caps(run.as_str())
            .filter_map(|c| c.get(1).map(|g| g.as_str()))
            .collect();
        for chunk in bins.chunks(4) {
            let r = if chunk.len() == 4 {
                chunk
                    .iter()
                    .map(|b| index(b, 999, "location bin"))
                    .collect::<Result<Vec<u32>, String>>()
                    .and_then(|v| {
                        let f = [0, 1, 2, 3]
                            .map(|i| (f64::from(v.get(i).copied().unwrap_or(0)) + 0.5) / 1000.0);
                        out.frac_to_image(f)
                    })
            } else {
                Err(format!("incomplete box: {} <loc_> values", chunk.len()))
            };
            out.add(run.as_str(), r, Some(&phrase));
        }
        out.soft();
    }
    florence_gap(text.get(last..).unwrap_or(""), &mut out);
    out.finish()
}

/// Keeps Florence-2 text without its sequence tokens; returns it as a phrase (tags removed).
fn florence_gap(gap: &str, out: &mut Out) -> String {
    let mut plain = String::new();
    let mut last = 0;
    for m in FLORENCE_SPECIAL
        .get()
        .into_iter()
        .flat_map(|re| re.find_iter(gap))
    {
        let g = gap.get(last..m.start()).unwrap_or("");
        plain.push_str(g);
        plain.push(' ');
        out.keep(g);
        out.soft();
        last = m.end();
    }
    let g = gap.get(last..).unwrap_or("");
    plain.push_str(g);
    out.keep(g);
    match ANY_TAG.get() {
        Some(re) => re.replace_all(&plain, " ").into_owned(),
        None => plain,
    }
}

/// Kosmos-2 state between tokens.
#[derive(Default)]
struct Kosmos<'t> {
    /// Where the open `<phrase>`'s text starts in `Out::text`.
    phrase_start: Option<usize>,
    /// A closed phrase, until text other than an `<object>` follows it.
    phrase: Option<String>,
    object: Option<KosmosObject<'t>>,
}

struct KosmosObject<'t> {
    start: usize,
    phrase: Option<String>,
    /// Patch indices, one group per box (`</delimiter_of_multi_objects/>` starts a new one).
    groups: Vec<Vec<&'t str>>,
}

impl<'t> Kosmos<'t> {
    /// An `<object>` interrupted by text or another tag was never closed: refuse it, as
    /// transformers' regex (which needs `</object>`) would skip it.
    fn abandon(&mut self, text: &str, end: usize, out: &mut Out) {
        if let Some(obj) = self.object.take() {
            out.reject(
                text.get(obj.start..end).unwrap_or("<object>"),
                "unclosed <object>",
            );
        }
    }

    fn gap(&mut self, text: &'t str, start: usize, end: usize, out: &mut Out) {
        let gap = text.get(start..end).unwrap_or("");
        if self.object.is_some() {
            if gap.trim().is_empty() {
                return;
            }
            self.abandon(text, start, out);
        }
        if out.keep(gap) {
            self.phrase = None;
        }
    }

    fn close(&mut self, text: &str, end: usize, out: &mut Out) {
        let Some(obj) = self.object.take() else {
            return;
        };
        let markup = text.get(obj.start..end).unwrap_or("<object>");
        for g in &obj.groups {
            let r = match g.as_slice() {
                [a, b] => index(a, 1023, "patch index").and_then(|ul| {
                    let lr = index(b, 1023, "patch index")?;
                    out.frac_to_image(kosmos_coords(ul, lr))
                }),
                _ => Err(format!("a box needs 2 patch indices, got {}", g.len())),
            };
            out.add(markup, r, obj.phrase.as_deref());
        }
    }

    fn token(&mut self, caps: &Captures<'t>, text: &'t str, out: &mut Out) {
        let Some(m) = caps.get(0) else { return };
        let tok = m.as_str();
        if let Some(idx) = group(caps, "idx") {
            match self.object.as_mut().and_then(|o| o.groups.last_mut()) {
                Some(g) => g.push(idx),
                None => {
                    out.reject(tok, "patch index outside <object>");
                    out.soft();
                }
            }
            return;
        }
        match tok {
            "</delimiter_of_multi_objects/>" => match self.object.as_mut() {
                Some(o) => o.groups.push(Vec::new()),
                None => out.soft(),
            },
            "</object>" => {
                self.close(text, m.end(), out);
                out.soft();
            }
            _ => {
                self.abandon(text, m.start(), out);
                out.soft();
                match tok {
                    "<phrase>" => (self.phrase_start, self.phrase) = (Some(out.text.len()), None),
                    "</phrase>" => {
                        self.phrase = self
                            .phrase_start
                            .take()
                            .and_then(|s| out.text.get(s..))
                            .map(clean_phrase);
                    }
                    "<object>" => {
                        let phrase = self.phrase.take();
                        self.object = Some(KosmosObject {
                            start: m.start(),
                            phrase,
                            groups: vec![Vec::new()],
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Kosmos-2: `<phrase>a dog</phrase><object><patch_index_0044><patch_index_0863></object>`,
/// several boxes in one `<object>` joined by `</delimiter_of_multi_objects/>`; the two indices
/// are the top-left and bottom-right cells of a 32x32 grid over the image.
fn parse_kosmos(text: &str, frame: &Frame) -> Parsed {
    // Kosmos2Processor.post_process_generation keeps only what follows the image tokens.
    let text = match text.rfind("</image>") {
        Some(i) => text.get(i + "</image>".len()..).unwrap_or(text),
        None => text,
    };
    let mut out = Out::new(frame, text.len());
    let mut st = Kosmos::default();
    let mut last = 0;
    for caps in KOSMOS.caps(text) {
        let Some(m) = caps.get(0) else { continue };
        st.gap(text, last, m.start(), &mut out);
        last = m.end();
        st.token(&caps, text, &mut out);
    }
    st.gap(text, last, text.len(), &mut out);
    st.abandon(text, text.len(), &mut out);
    out.finish()
}

/// Qwen2.5-VL: JSON objects `{"bbox_2d": [x1, y1, x2, y2], "label": "..."}` (usually a list in a
/// json code fence) in pixels of the input after smart_resize: the cookbook's
/// `plot_bounding_boxes` divides by `input_width = image_grid_thw[2] * 14`, the resized width.
/// Fences holding boxes are markup; so is a bare list of box objects. Prose around them stays.
fn parse_qwen25(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let resized = qwen_frame(frame);
    let mut last = 0;
    for caps in FENCE.caps(text) {
        let (Some(m), Some(body)) = (caps.get(0), caps.name("body")) else {
            continue;
        };
        let has_boxes = QWEN_OBJECT
            .get()
            .is_some_and(|re| re.is_match(body.as_str()));
        if !has_boxes {
            continue;
        }
        qwen25_bare(text.get(last..m.start()).unwrap_or(""), resized, &mut out);
        last = m.end();
        for obj in QWEN_OBJECT
            .get()
            .into_iter()
            .flat_map(|re| re.find_iter(body.as_str()))
        {
            qwen25_object(obj.as_str(), resized, &mut out);
        }
        out.soft();
    }
    qwen25_bare(text.get(last..).unwrap_or(""), resized, &mut out);
    out.finish()
}

/// Unfenced text: box objects and the list punctuation around them go; the rest is kept.
fn qwen25_bare(seg: &str, resized: (f64, f64), out: &mut Out) {
    const GLUE_LEFT: &[u8] = b" \t\r\n,[";
    const GLUE_RIGHT: &[u8] = b" \t\r\n,]";
    let bytes = seg.as_bytes();
    let mut last = 0;
    for obj in QWEN_OBJECT
        .get()
        .into_iter()
        .flat_map(|re| re.find_iter(seg))
    {
        // Glue bytes are ASCII, so stopping on them keeps the cut on char boundaries.
        let mut start = obj.start();
        while start > last && bytes.get(start - 1).is_some_and(|b| GLUE_LEFT.contains(b)) {
            start -= 1;
        }
        let mut end = obj.end();
        while bytes.get(end).is_some_and(|b| GLUE_RIGHT.contains(b)) {
            end += 1;
        }
        qwen25_prose(seg.get(last..start).unwrap_or(""), out);
        out.soft();
        qwen25_object(obj.as_str(), resized, out);
        last = end;
    }
    qwen25_prose(seg.get(last..).unwrap_or(""), out);
}

/// Prose, minus stray fence markers (a fence cut off by the token limit never closes).
fn qwen25_prose(s: &str, out: &mut Out) {
    let mut last = 0;
    for m in FENCE_MARK.get().into_iter().flat_map(|re| re.find_iter(s)) {
        out.keep(s.get(last..m.start()).unwrap_or(""));
        out.soft();
        last = m.end();
    }
    out.keep(s.get(last..).unwrap_or(""));
}

fn qwen25_object(obj: &str, (rw, rh): (f64, f64), out: &mut Out) {
    let label = QWEN_LABEL.first(obj).and_then(|c| {
        let (raw, quote) = match (c.name("d"), c.name("s")) {
            (Some(d), _) => (d.as_str(), '"'),
            (None, Some(s)) => (s.as_str(), '\''),
            _ => return None,
        };
        // A double-quoted label is a JSON string; decode its escapes the JSON way.
        let decoded = (quote == '"')
            .then(|| serde_json::from_str::<String>(&format!("\"{raw}\"")).ok())
            .flatten();
        Some(decoded.unwrap_or_else(|| raw.to_string()))
    });
    let r = match QWEN_BBOX.first(obj).and_then(|c| c.name("v")) {
        Some(v) => four(v.as_str().split(',')).and_then(|v| {
            if !(rw > 0.0 && rh > 0.0) {
                return Err("the frame's input size is zero".into());
            }
            in_range(
                &v,
                rw,
                rh,
                &format!("pixels of the {rw}x{rh} resized input"),
            )?;
            out.frac_to_image([v[0] / rw, v[1] / rh, v[2] / rw, v[3] / rh])
        }),
        None => Err("bbox_2d is not a list of numbers".into()),
    };
    out.add(obj, r, label.as_deref());
}

/// Region ids: Groma's `<p>phrase</p><roi><r3></roi>` (its region tokens are `<r0>`..`<r99>`),
/// `<r3>`, p2g's own `[r3]` and a bare `r3`. A bare `r3` that names no region may be prose (a
/// part number, "R2"), so it is left alone; tagged or bracketed unknown ids are refused.
fn parse_regions(text: &str, frame: &Frame) -> Parsed {
    let mut out = Out::new(frame, text.len());
    let regions: HashMap<&str, BBox> = frame
        .regions
        .iter()
        .map(|(id, b)| (id.as_str(), *b))
        .collect();
    let mut phrase: Option<&str> = None;
    let mut last = 0;
    for caps in REGION.caps(text) {
        let Some(m) = caps.get(0) else { continue };
        if out.keep(text.get(last..m.start()).unwrap_or("")) {
            phrase = None;
        }
        last = m.end();
        if let Some(p) = group(&caps, "ph") {
            out.soft();
            out.keep(p);
            out.soft();
            phrase = Some(p);
            continue;
        }
        let Some((n, bare)) = group(&caps, "a")
            .or(group(&caps, "b"))
            .map(|n| (n, false))
            .or(group(&caps, "c").map(|n| (n, true)))
        else {
            out.soft();
            continue;
        };
        let key = format!("r{n}");
        // "r12" or "12": p2g may name its regions either way.
        match regions
            .get_key_value(key.as_str())
            .or_else(|| regions.get_key_value(n))
        {
            Some((&id, &b)) => {
                let r = out.to_image([b.x1, b.y1, b.x2, b.y2].map(f64::from));
                match r {
                    Ok(b) => out.push(b, phrase, Some(id)),
                    Err(why) => out.reject(m.as_str(), &format!("region {id}: {why}")),
                }
                out.soft();
            }
            None if bare => {
                out.keep(m.as_str());
            }
            None => {
                out.reject(m.as_str(), &unknown_region(&key, frame));
                out.soft();
            }
        }
    }
    out.keep(text.get(last..).unwrap_or(""));
    out.finish()
}

fn unknown_region(key: &str, frame: &Frame) -> String {
    let ids: Vec<&str> = frame
        .regions
        .iter()
        .take(12)
        .map(|(id, _)| id.as_str())
        .collect();
    let more = if frame.regions.len() > ids.len() {
        ", ..."
    } else {
        ""
    };
    format!(
        "unknown region {key} (the model was given: {}{more})",
        ids.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn frame(image: (u32, u32), input: (u32, u32)) -> Frame<'static> {
        Frame {
            image,
            input,
            regions: &[],
        }
    }

    #[track_caller]
    fn assert_box(b: &BBox, want: [f64; 4], tol: f64) {
        let got = [b.x1, b.y1, b.x2, b.y2].map(f64::from);
        for i in 0..4 {
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "got {got:?}, want {want:?} (tol {tol})"
            );
        }
    }

    #[track_caller]
    fn assert_sane(p: &Parsed, f: &Frame) {
        let (w, h) = (f.image.0 as f32, f.image.1 as f32);
        for b in &p.boxes {
            let bb = b.bbox;
            assert!(
                bb.x1.is_finite() && bb.y1.is_finite() && bb.x2.is_finite() && bb.y2.is_finite()
            );
            assert!(bb.x1 < bb.x2 && bb.y1 < bb.y2, "{bb:?}");
            assert!(
                bb.x1 >= 0.0 && bb.y1 >= 0.0 && bb.x2 <= w && bb.y2 <= h,
                "{bb:?}"
            );
        }
        assert!(!p.text.contains(SOFT));
        assert!(p.rejected.len() <= MAX_REJECTED + 1);
    }

    fn phrases(p: &Parsed) -> Vec<Option<&str>> {
        p.boxes.iter().map(|b| b.phrase.as_deref()).collect()
    }

    #[test]
    fn every_pattern_compiles() {
        for p in ALL_PATS {
            assert!(p.get().is_some(), "{}", p.src);
        }
    }

    #[test]
    fn names_parse_display_and_serde_agree() {
        for c in BoxConvention::ALL {
            assert_eq!(c.name().parse::<BoxConvention>(), Ok(c));
            assert_eq!(c.to_string(), c.name());
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<BoxConvention>(&json).unwrap(), c);
            assert!(!c.instruction().is_empty());
        }
        assert_eq!(BoxConvention::default(), BoxConvention::Pixels);
    }

    #[test]
    fn aliases_and_error() {
        let cases = [
            ("qwen2.5vl", BoxConvention::Qwen25Vl),
            ("Qwen2.5-VL", BoxConvention::Qwen25Vl),
            ("qwen-vl", BoxConvention::QwenVl),
            ("florence2", BoxConvention::Florence2),
            ("Florence_2", BoxConvention::Florence2),
            ("kosmos2", BoxConvention::Kosmos2),
            ("groma", BoxConvention::RegionIds),
            ("region_ids", BoxConvention::RegionIds),
            ("minigptv2", BoxConvention::MiniGptV2),
            ("MiniGPT-v2", BoxConvention::MiniGptV2),
            (" SHIKRA ", BoxConvention::Shikra),
        ];
        for (s, c) in cases {
            assert_eq!(s.parse::<BoxConvention>(), Ok(c), "{s}");
        }
        let err = "llava".parse::<BoxConvention>().unwrap_err();
        for c in BoxConvention::ALL {
            assert!(err.contains(c.name()), "{err}");
        }
    }

    #[test]
    fn smart_resize_matches_qwen_vl_utils() {
        // Expected values from qwen-vl-utils' smart_resize (returned there as (h, w)).
        let cases = [
            ((1024, 768), (1036, 756)),
            ((4000, 3000), (4004, 2996)),
            ((640, 640), (644, 644)),
            ((10, 10), (56, 56)),
            ((42, 70), (56, 56)), // 1.5 and 2.5 patches: Python rounds half to even
            ((98, 98), (112, 112)),
            ((1, 200), (28, 196)),
            ((12000, 9000), (4116, 3080)),
            ((1920, 1080), (1932, 1092)),
            ((5000, 5000), (3556, 3556)),
            ((1036, 756), (1036, 756)),
        ];
        for ((w, h), want) in cases {
            let got = qwen25vl_resized(w, h, QWEN25VL_MIN_PIXELS, QWEN25VL_MAX_PIXELS);
            assert_eq!(got, want, "{w}x{h}");
        }
        assert_eq!(
            qwen25vl_resized(4000, 3000, 256 * 28 * 28, 1280 * 28 * 28),
            (1148, 840)
        );
        assert_eq!(qwen25vl_resized(0, 10, 1, 100), (0, 0));
    }

    #[test]
    fn kosmos2_model_card_example() {
        // transformers Kosmos2 docs / microsoft/kosmos-2-patch14-224 model card, raw generation
        // (`cleanup_and_extract=False`); the card gives the entities as
        // [('a snowman', (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
        //  ('a fire', (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)])].
        let text = "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.";
        let f = frame((640, 480), (224, 224));
        let p = BoxConvention::Kosmos2.parse(text, &f);
        assert_eq!(p.text, "An image of a snowman warming himself by a fire.");
        assert_eq!(phrases(&p), [Some("a snowman"), Some("a fire")]);
        let frac = |v: [f64; 4]| [v[0] * 640.0, v[1] * 480.0, v[2] * 640.0, v[3] * 480.0];
        assert_box(
            &p.boxes[0].bbox,
            frac([0.390625, 0.046875, 0.984375, 0.828125]),
            1e-3,
        );
        assert_box(
            &p.boxes[1].bbox,
            frac([0.171875, 0.015625, 0.484375, 0.890625]),
            1e-3,
        );
        assert!(p.rejected.is_empty());
    }

    #[test]
    fn kosmos2_several_boxes_one_object_and_same_row() {
        // One object with two boxes; the second lies in one row so it covers whole cells.
        let text = "<phrase>two cats</phrase><object><patch_index_0000><patch_index_0033></delimiter_of_multi_objects/><patch_index_0002><patch_index_0005></object>";
        let f = frame((320, 320), (0, 0));
        let p = BoxConvention::Kosmos2.parse(text, &f);
        assert_eq!(phrases(&p), [Some("two cats"), Some("two cats")]);
        assert_box(&p.boxes[0].bbox, [5.0, 5.0, 15.0, 15.0], 1e-3);
        assert_box(&p.boxes[1].bbox, [20.0, 0.0, 60.0, 10.0], 1e-3);
        assert_eq!(p.text, "two cats");
    }

    #[test]
    fn qwen_vl_readme_examples() {
        // QwenLM/Qwen-VL README.md, "Running Qwen-VL" (base model, grounded caption).
        let text = "<ref> Woman</ref><box>(451,379),(731,806)</box> and<ref> her dog</ref><box>(219,424),(576,896)</box> playing on the beach<|endoftext|>";
        let f = frame((2000, 1000), (448, 448));
        let p = BoxConvention::QwenVl.parse(text, &f);
        assert_eq!(p.text, "Woman and her dog playing on the beach");
        assert_eq!(phrases(&p), [Some("Woman"), Some("her dog")]);
        assert_box(&p.boxes[0].bbox, [902.0, 379.0, 1462.0, 806.0], 1e-3);
        assert_box(&p.boxes[1].bbox, [438.0, 424.0, 1152.0, 896.0], 1e-3);
        // README.md, Qwen-VL-Chat second turn.
        let p = BoxConvention::QwenVl.parse("<ref>击掌</ref><box>(536,509),(588,602)</box>", &f);
        assert_eq!(phrases(&p), [Some("击掌")]);
        assert_box(&p.boxes[0].bbox, [1072.0, 509.0, 1176.0, 602.0], 1e-3);
        assert_eq!(p.text, "击掌");
    }

    #[test]
    fn qwen_vl_several_boxes_follow_one_ref() {
        let text =
            "<ref>the dogs</ref><box>(0,0),(100,100)</box><box>(500,500),(1000,1000)</box> run";
        let p = BoxConvention::QwenVl.parse(text, &frame((1000, 1000), (0, 0)));
        assert_eq!(phrases(&p), [Some("the dogs"), Some("the dogs")]);
        assert_eq!(p.text, "the dogs run");
    }

    #[test]
    fn minigpt_v2_demo_examples() {
        // Vision-CAIR/MiniGPT-4 demo_v2.py, the "[identify]" example box.
        let f = frame((500, 300), (448, 448));
        let p = BoxConvention::MiniGptV2.parse("[identify] what is this {<4><50><30><65>}", &f);
        assert_eq!(p.text, "[identify] what is this");
        assert_box(&p.boxes[0].bbox, [20.0, 150.0, 150.0, 195.0], 1e-3);
        assert_eq!(phrases(&p), [None]);
        // A grounded answer in the form demo_v2.py's extract_substrings / <delim> split parses.
        let text = "<p>a cupcake</p> {<10><20><30><40>}<delim>{<50><60><70><80>} next to <p>a cup</p> {<1><2><3><4>}.";
        let p = BoxConvention::MiniGptV2.parse(text, &f);
        assert_eq!(p.text, "a cupcake next to a cup.");
        assert_eq!(
            phrases(&p),
            [Some("a cupcake"), Some("a cupcake"), Some("a cup")]
        );
        assert_box(&p.boxes[1].bbox, [250.0, 180.0, 350.0, 240.0], 1e-3);
    }

    #[test]
    fn florence2_processor_test_examples() {
        // huggingface/transformers tests/models/florence2/test_processing_florence2.py, with the
        // expected boxes there truncated to ints by `.int()`; ours keep the bin centre.
        let text = "</s><s>car<loc_53><loc_334><loc_933><loc_775>door handle<loc_425><loc_504><loc_474><loc_516></s><pad>";
        let f = frame((1000, 1000), (768, 768));
        let p = BoxConvention::Florence2.parse(text, &f);
        assert_eq!(p.text, "car door handle");
        assert_eq!(phrases(&p), [Some("car"), Some("door handle")]);
        let hf = [[53.0, 334.0, 933.0, 775.0], [425.0, 504.0, 474.0, 516.0]];
        for (b, want) in p.boxes.iter().zip(hf) {
            assert_box(&b.bbox, want.map(|v| v + 0.5), 1e-3);
        }
        // Phrase grounding: two boxes for one phrase. `<loc_1000>` is not one of Florence-2's
        // tokens (<loc_0>..<loc_999>), so the "sky" box is refused.
        let text = "</s><s>red car<loc_53><loc_334><loc_933><loc_775><loc_711><loc_203><loc_906><loc_546>sky<loc_0><loc_0><loc_1000><loc_300></s>";
        let p = BoxConvention::Florence2.parse(text, &f);
        assert_eq!(phrases(&p), [Some("red car"), Some("red car")]);
        assert_eq!(p.rejected.len(), 1);
        assert!(p.rejected[0].contains("out of range"), "{:?}", p.rejected);
        assert_eq!(p.text, "red car sky");
    }

    #[test]
    fn qwen25_vl_cookbook_example() {
        // QwenLM/Qwen2.5-VL cookbooks/spatial_understanding.ipynb, "Detect certain object in the
        // image" output (first two of its twelve boxes), read from a stored copy of the notebook.
        let text = "```json\n[\n\t{\"bbox_2d\": [43, 571, 209, 753], \"label\": \"cupcake with white frosting and colorful sprinkles\"},\n\t{\"bbox_2d\": [68, 408, 214, 596], \"label\": \"cupcake with red frosting and sprinkles\"}\n]\n```";
        // The notebook prints only the size of the 640x640 thumbnail it draws on (its boxes reach
        // x=994, y=958 of the model's frame), so take a 2000x2000 original sent as 1008x1008,
        // which smart_resize leaves as it is (36 x 28).
        let f = frame((2000, 2000), (1008, 1008));
        let p = BoxConvention::Qwen25Vl.parse(text, &f);
        assert_eq!(p.text, "");
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        let s = 2000.0 / 1008.0;
        assert_box(
            &p.boxes[0].bbox,
            [43.0 * s, 571.0 * s, 209.0 * s, 753.0 * s],
            1e-3,
        );
        assert_box(
            &p.boxes[1].bbox,
            [68.0 * s, 408.0 * s, 214.0 * s, 596.0 * s],
            1e-3,
        );
        assert_eq!(
            phrases(&p),
            [
                Some("cupcake with white frosting and colorful sprinkles"),
                Some("cupcake with red frosting and sprinkles")
            ]
        );
    }

    #[test]
    fn qwen25_vl_resized_frame_maps_back_to_original() {
        // A 4000x3000 original sent as 1024x768: the model sees smart_resize(1024x768) = 1036x756.
        let f = frame((4000, 3000), (1024, 768));
        let text = "[{\"bbox_2d\": [518, 378, 1036, 756], \"label\": \"the lower right quarter\"}]";
        let p = BoxConvention::Qwen25Vl.parse(text, &f);
        assert_box(&p.boxes[0].bbox, [2000.0, 1500.0, 4000.0, 3000.0], 1e-2);
        assert_eq!(p.text, "");
        // One pixel past the resized frame is out of range, and says which frame.
        let p = BoxConvention::Qwen25Vl.parse("{\"bbox_2d\": [0, 0, 1037, 10]}", &f);
        assert!(p.boxes.is_empty());
        assert!(p.rejected[0].contains("1036x756"), "{:?}", p.rejected);
    }

    #[test]
    fn qwen25_vl_bare_json_and_prose() {
        let f = frame((1000, 1000), (1008, 1008)); // 1008 = 36 * 28, so no resize
        let bare = "[{\"bbox_2d\": [0, 0, 504, 504], \"label\": \"a\"}, {\"bbox_2d\": [504, 504, 1008, 1008], \"label\": \"b\"}]";
        let p = BoxConvention::Qwen25Vl.parse(bare, &f);
        assert_eq!(phrases(&p), [Some("a"), Some("b")]);
        assert_box(&p.boxes[1].bbox, [500.0, 500.0, 1000.0, 1000.0], 1e-3);
        assert_eq!(p.text, "");
        let fenced =
            format!("Here are the boxes:\n```json\n{bare}\n```\nThe cake [b] is on the right.");
        let p = BoxConvention::Qwen25Vl.parse(&fenced, &f);
        assert_eq!(p.boxes.len(), 2);
        assert_eq!(
            p.text,
            "Here are the boxes:\n\nThe cake [b] is on the right."
        );
        let trailing = format!("{bare} so b is bigger.");
        let p = BoxConvention::Qwen25Vl.parse(&trailing, &f);
        assert_eq!(p.boxes.len(), 2);
        assert_eq!(p.text, "so b is bigger.");
        let escaped = r#"{"bbox_2d": [1, 2, 30, 40], "label": "the \"big\" cake"}"#;
        let p = BoxConvention::Qwen25Vl.parse(escaped, &f);
        assert_eq!(phrases(&p), [Some("the \"big\" cake")]);
        let python_dict = "[{'bbox_2d': [1, 2, 30, 40], 'label': 'cup'}]";
        let p = BoxConvention::Qwen25Vl.parse(python_dict, &f);
        assert_eq!(phrases(&p), [Some("cup")]);
    }

    #[test]
    fn shikra_boxes_are_fractions_of_the_padded_square() {
        // Written as Shikra's PlainBoxFormatter.format_box writes them (3 decimals, ',' and ';');
        // the README shows its examples only as an image. A 640x480 input is padded to 640x640
        // with 80 rows above (`expand2square`), so y = v * 640 - 80 in input pixels.
        let f = frame((1280, 960), (640, 480));
        let p = BoxConvention::Shikra.parse("The dog [0.102,0.346,0.488,0.754] sits.", &f);
        assert_eq!(p.text, "The dog sits.");
        let y = |v: f64| (v * 640.0 - 80.0) * 2.0;
        assert_box(
            &p.boxes[0].bbox,
            [0.102 * 1280.0, y(0.346), 0.488 * 1280.0, y(0.754)],
            1e-2,
        );
        let p = BoxConvention::Shikra
            .parse("two [0.100,0.200,0.300,0.400;0.500,0.500,0.900,0.800]", &f);
        assert_eq!(p.boxes.len(), 2);
        assert_eq!(p.text, "two");
        // A box entirely in the padding is outside the image.
        let p = BoxConvention::Shikra.parse("[0.1,0.0,0.2,0.1]", &f);
        assert!(p.boxes.is_empty());
        assert!(
            p.rejected[0].contains("outside the image"),
            "{:?}",
            p.rejected
        );
    }

    #[test]
    fn ferret_integer_grid() {
        // Ferret's output form, as its decoder reads it (`find_bbox_template`'s
        // `\[(\d+), (\d+), (\d+), (\d+)\]`): Ferret-Bench's reference answer for question 3
        // (ferret/eval/ferret_gpt4_data/ground_conv/answer.jsonl, written there in 0-1) put on
        // Ferret's 0-999 grid.
        let text = "There is a train [2, 408, 999, 683] on the bridge [2, 608, 988, 877].";
        let f = frame((1000, 500), (336, 336));
        let p = BoxConvention::Ferret.parse(text, &f);
        assert_eq!(p.text, "There is a train on the bridge.");
        assert_box(&p.boxes[0].bbox, [2.0, 204.0, 999.0, 341.5], 1e-3);
        assert_box(&p.boxes[1].bbox, [2.0, 304.0, 988.0, 438.5], 1e-3);
    }

    #[test]
    fn shikra_and_ferret_refuse_each_other() {
        let f = frame((1000, 1000), (0, 0));
        let p = BoxConvention::Shikra.parse("a [100, 200, 300, 400]", &f);
        assert!(p.boxes.is_empty());
        assert!(p.rejected[0].contains("out of range"), "{:?}", p.rejected);
        assert_eq!(
            p.text, "a [100, 200, 300, 400]",
            "unusable brackets stay in the text"
        );
        let p = BoxConvention::Ferret.parse("a [0.201, 0.002, 0.940, 0.758]", &f);
        assert!(p.boxes.is_empty());
        assert!(p.rejected[0].contains("0-1 box"), "{:?}", p.rejected);
        let p = BoxConvention::Ferret.parse("[0, 0, 1000, 5]", &f);
        assert!(p.rejected[0].contains("out of range"), "{:?}", p.rejected);
    }

    #[test]
    fn pixels_forms_and_scaling() {
        let f = frame((2000, 1000), (1000, 500));
        let text = "[the dog](100,50,300,250) sits next to [40, 60, 80, 120] and (1,2,3,4).";
        let p = BoxConvention::Pixels.parse(text, &f);
        assert_eq!(p.text, "the dog sits next to and.");
        assert_eq!(phrases(&p), [Some("the dog"), None, None]);
        assert_box(&p.boxes[0].bbox, [200.0, 100.0, 600.0, 500.0], 1e-3);
        assert_box(&p.boxes[1].bbox, [80.0, 120.0, 160.0, 240.0], 1e-3);
        assert_box(&p.boxes[2].bbox, [2.0, 4.0, 6.0, 8.0], 1e-3);
    }

    #[test]
    fn pixels_ignores_region_refs_single_numbers_and_keeps_prose_lists() {
        let f = frame((1000, 1000), (0, 0));
        for text in ["see [r12] and [3] and [1, 2]", "(3)", "[a](b)"] {
            let p = BoxConvention::Pixels.parse(text, &f);
            assert!(p.boxes.is_empty() && p.rejected.is_empty(), "{text}: {p:?}");
            assert_eq!(p.text, text);
        }
        let p = BoxConvention::Pixels.parse("in [2019, 2020, 2021, 2022] sales rose", &f);
        assert!(p.boxes.is_empty());
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.text, "in [2019, 2020, 2021, 2022] sales rose");
    }

    fn regions() -> Vec<(String, BBox)> {
        vec![
            ("r1".to_string(), BBox::new(10.0, 10.0, 50.0, 50.0)),
            ("r3".to_string(), BBox::new(100.0, 0.0, 300.0, 200.0)),
            ("r7".to_string(), BBox::new(0.0, 100.0, 40.0, 400.0)),
        ]
    }

    #[test]
    fn region_ids_groma_and_p2g_forms() {
        // Groma's grounded answer layout (groma/data/datasets/flickr.py: boe + phrase + eoe,
        // bor + box tokens + eor) with its region tokens <r0>..<r99> (groma/constants.py).
        let regions = regions();
        let f = Frame {
            image: (400, 400),
            input: (448, 448),
            regions: &regions,
        };
        let text = "<p>A woman</p><roi><r3></roi> feeds <p>two dogs</p><roi><r1><r7></roi>.";
        let p = BoxConvention::RegionIds.parse(text, &f);
        assert_eq!(p.text, "A woman feeds two dogs.");
        assert_eq!(
            phrases(&p),
            [Some("A woman"), Some("two dogs"), Some("two dogs")]
        );
        let ids: Vec<_> = p.boxes.iter().map(|b| b.region.as_deref()).collect();
        assert_eq!(ids, [Some("r3"), Some("r1"), Some("r7")]);
        assert_eq!(p.boxes[0].bbox, BBox::new(100.0, 0.0, 300.0, 200.0));
        let p = BoxConvention::RegionIds
            .parse("The cup [r1] is left of r3 and <r9>, not R2 or r2d2.", &f);
        let ids: Vec<_> = p.boxes.iter().map(|b| b.region.as_deref()).collect();
        assert_eq!(ids, [Some("r1"), Some("r3")]);
        assert_eq!(p.text, "The cup is left of and, not R2 or r2d2.");
        assert_eq!(p.rejected.len(), 1);
        assert!(
            p.rejected[0].contains("unknown region r9"),
            "{:?}",
            p.rejected
        );
        let p = BoxConvention::RegionIds.parse("part r42 is fine", &f);
        assert!(p.rejected.is_empty() && p.boxes.is_empty());
        assert_eq!(p.text, "part r42 is fine");
    }

    /// The largest error a format -> parse round trip may add, in original-image pixels.
    fn tolerance(c: BoxConvention, f: &Frame) -> (f64, f64) {
        let (w, h) = dims(f.image);
        let (iw, ih) = dims(input_dims(f));
        let unit = |per: f64| (per * w, per * h);
        let (tw, th) = match c {
            BoxConvention::Pixels => (0.5 * w / iw, 0.5 * h / ih),
            BoxConvention::Shikra => {
                let side = iw.max(ih);
                (0.0005 * side * w / iw, 0.0005 * side * h / ih)
            }
            BoxConvention::Ferret => unit(1.0 / 1000.0),
            BoxConvention::MiniGptV2 => unit(0.5 / 100.0),
            BoxConvention::Kosmos2 => unit(1.0 / 32.0),
            BoxConvention::QwenVl | BoxConvention::Florence2 => unit(0.5 / 1000.0),
            BoxConvention::Qwen25Vl => {
                let (rw, rh) = qwen_frame(f);
                (0.5 * w / rw, 0.5 * h / rh)
            }
            BoxConvention::RegionIds => (0.0, 0.0),
        };
        (tw + 1e-3, th + 1e-3)
    }

    #[test]
    fn format_then_parse_round_trips_for_every_convention() {
        let boxes = [
            BBox::new(100.0, 200.0, 900.0, 700.0),
            BBox::new(0.0, 0.0, 1920.0, 1080.0),
            BBox::new(1500.3, 10.7, 1700.9, 1000.2),
            BBox::new(640.0, 360.0, 700.0, 400.0),
        ];
        let regions: Vec<(String, BBox)> = boxes
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("r{i}"), *b))
            .collect();
        for input in [(1280, 720), (1024, 768), (0, 0)] {
            let f = Frame {
                image: (1920, 1080),
                input,
                regions: &regions,
            };
            for c in BoxConvention::ALL {
                let (tw, th) = tolerance(c, &f);
                for (i, b) in boxes.iter().enumerate() {
                    let id = format!("r{i}");
                    let written = c.format(b, &f, Some(&id));
                    let p = c.parse(&written, &f);
                    assert_eq!(p.boxes.len(), 1, "{c} {input:?} {written} -> {p:?}");
                    let got = p.boxes[0].bbox;
                    let ok = (f64::from(got.x1) - f64::from(b.x1)).abs() <= tw
                        && (f64::from(got.x2) - f64::from(b.x2)).abs() <= tw
                        && (f64::from(got.y1) - f64::from(b.y1)).abs() <= th
                        && (f64::from(got.y2) - f64::from(b.y2)).abs() <= th;
                    assert!(
                        ok,
                        "{c} {input:?}: {b:?} -> {written} -> {got:?} (tol {tw}, {th})"
                    );
                    assert!(p.rejected.is_empty(), "{c}: {:?}", p.rejected);
                }
            }
        }
    }

    #[test]
    fn format_examples() {
        let f = frame((2000, 1000), (1000, 500));
        let b = BBox::new(246.0, 456.0, 1578.0, 999.0);
        assert_eq!(
            BoxConvention::QwenVl.format(&b, &f, None),
            "<box>(123,456),(789,999)</box>"
        );
        assert_eq!(
            BoxConvention::Pixels.format(&b, &f, None),
            "[123, 228, 789, 500]"
        );
        assert_eq!(
            BoxConvention::RegionIds.format(&b, &f, Some("r12")),
            "[r12]"
        );
        assert_eq!(BoxConvention::RegionIds.format(&b, &f, Some("12")), "[r12]");
        assert_eq!(
            BoxConvention::RegionIds.format(&b, &f, None),
            "[123, 228, 789, 500]"
        );
        assert_eq!(
            BoxConvention::Ferret.format(&b, &f, None),
            "[123, 456, 789, 999]"
        );
        assert_eq!(
            BoxConvention::MiniGptV2.format(&b, &f, None),
            "{<12><46><79><100>}"
        );
        assert_eq!(
            BoxConvention::Florence2.format(&b, &f, None),
            "<loc_123><loc_456><loc_789><loc_999>"
        );
        let whole = BBox::new(0.0, 0.0, 2000.0, 1000.0);
        assert_eq!(
            BoxConvention::Kosmos2.format(&whole, &f, None),
            "<object><patch_index_0000><patch_index_1023></object>"
        );
        // 1000x500 input padded to 1000x1000: 250 rows above.
        assert_eq!(
            BoxConvention::Shikra.format(&whole, &f, None),
            "[0.000,0.250,1.000,0.750]"
        );
        // 1000x500 -> smart_resize 1008x504.
        assert_eq!(
            BoxConvention::Qwen25Vl.format(&whole, &f, None),
            "{\"bbox_2d\": [0, 0, 1008, 504]}"
        );
    }

    #[test]
    fn format_survives_degenerate_frames_and_boxes() {
        let nan = BBox::new(f32::NAN, f32::INFINITY, -5.0, 1e30);
        for f in [
            frame((0, 0), (0, 0)),
            frame((100, 100), (0, 7)),
            frame((1, 1), (1, 1)),
        ] {
            for c in BoxConvention::ALL {
                let s = c.format(&nan, &f, None);
                assert!(!s.contains("NaN") && !s.contains("inf"), "{c}: {s}");
                let _ = c.parse(&s, &f);
            }
        }
    }

    #[test]
    fn empty_text_gives_nothing() {
        let f = frame((100, 100), (100, 100));
        for c in BoxConvention::ALL {
            assert_eq!(c.parse("", &f), Parsed::default(), "{c}");
        }
    }

    #[test]
    fn unclosed_markup_is_refused_and_text_survives() {
        let f = frame((1000, 1000), (0, 0));
        let cases = [
            (
                BoxConvention::Kosmos2,
                "<phrase>a dog</phrase><object><patch_index_0044> and more",
                "unclosed <object>",
                "a dog and more",
            ),
            (
                BoxConvention::QwenVl,
                "<ref>dog</ref><box>(1,2),(3,4) sat",
                "unclosed <box>",
                "dog sat",
            ),
            (
                BoxConvention::MiniGptV2,
                "<p>dog</p> {<1><2><3><4> sat",
                "unclosed",
                "dog sat",
            ),
            (
                BoxConvention::Florence2,
                "dog<loc_1><loc_2><loc_3>",
                "incomplete box",
                "dog",
            ),
        ];
        for (c, text, why, kept) in cases {
            let p = c.parse(text, &f);
            assert!(p.boxes.is_empty(), "{c}: {p:?}");
            assert!(
                p.rejected.iter().any(|r| r.contains(why)),
                "{c}: {:?}",
                p.rejected
            );
            assert_eq!(p.text, kept, "{c}");
        }
        let p = BoxConvention::Qwen25Vl.parse("```json\n[{\"bbox_2d\": [1, 2, 3", &f);
        assert!(p.boxes.is_empty());
        let p = BoxConvention::Kosmos2.parse("<patch_index_0001> lone", &f);
        assert!(
            p.rejected[0].contains("outside <object>"),
            "{:?}",
            p.rejected
        );
    }

    #[test]
    fn non_numeric_values_are_refused() {
        let f = frame((1000, 1000), (1008, 1008));
        let cases = [
            (BoxConvention::MiniGptV2, "{<a><b><c><d>}", "non-numeric"),
            (
                BoxConvention::MiniGptV2,
                "{<1><2><3>}",
                "expected 4 numbers",
            ),
            (
                BoxConvention::QwenVl,
                "<box>(a,b),(c,d)</box>",
                "malformed <box>",
            ),
            (
                BoxConvention::Qwen25Vl,
                "{\"bbox_2d\": [\"a\", 1, 2, 3]}",
                "non-numeric",
            ),
            (
                BoxConvention::Qwen25Vl,
                "{\"bbox_2d\": \"everywhere\"}",
                "not a list",
            ),
            (
                BoxConvention::Kosmos2,
                "<object><patch_index_abcd><patch_index_0001></object>",
                "non-numeric",
            ),
            (
                BoxConvention::Florence2,
                "<loc_x><loc_1><loc_2><loc_3>",
                "non-numeric",
            ),
        ];
        for (c, text, why) in cases {
            let p = c.parse(text, &f);
            assert!(p.boxes.is_empty(), "{c}: {p:?}");
            assert!(
                p.rejected.iter().any(|r| r.contains(why)),
                "{c} {text}: {:?}",
                p.rejected
            );
        }
    }

    #[test]
    fn huge_negative_and_non_finite_numbers_are_refused() {
        let f = frame((1000, 1000), (1000, 1000));
        let cases = [
            (BoxConvention::Pixels, "[1e300, 0, 10, 10]", "out of range"),
            (BoxConvention::Pixels, "[-5, 0, 10, 10]", "out of range"),
            (
                BoxConvention::Pixels,
                "[NaN, 0, 10, 10]",
                "not a finite number",
            ),
            (
                BoxConvention::Pixels,
                "(1e999, 0, 10, 10)",
                "not a finite number",
            ),
            (
                BoxConvention::Shikra,
                "[inf,0.1,0.2,0.3]",
                "not a finite number",
            ),
            (BoxConvention::Ferret, "[1000000, 1, 2, 3]", "out of range"),
            (
                BoxConvention::QwenVl,
                "<box>(99999999999999999999,1),(2,3)</box>",
                "out of range",
            ),
            (
                BoxConvention::MiniGptV2,
                "{<-5><0><10><10>}",
                "out of range",
            ),
            (
                BoxConvention::Kosmos2,
                "<object><patch_index_1024><patch_index_0001></object>",
                "out of range",
            ),
            (
                BoxConvention::Qwen25Vl,
                "{\"bbox_2d\": [NaN, 1, 2, 3]}",
                "not a finite number",
            ),
        ];
        for (c, text, why) in cases {
            let p = c.parse(text, &f);
            assert!(p.boxes.is_empty(), "{c} {text}: {p:?}");
            assert!(
                p.rejected.iter().any(|r| r.contains(why)),
                "{c} {text}: {:?}",
                p.rejected
            );
            assert!(p.rejected.iter().all(|r| r.len() < 200), "{:?}", p.rejected);
        }
    }

    #[test]
    fn inverted_boxes_are_swapped_and_zero_area_refused() {
        let f = frame((1000, 1000), (1000, 1000));
        let inverted = [
            (BoxConvention::Pixels, "[300, 250, 100, 50]"),
            (BoxConvention::QwenVl, "<box>(300,250),(100,50)</box>"),
            (BoxConvention::Ferret, "[300, 250, 100, 50]"),
            (BoxConvention::MiniGptV2, "{<30><25><10><5>}"),
        ];
        for (c, text) in inverted {
            let p = c.parse(text, &f);
            assert_eq!(p.boxes.len(), 1, "{c}: {p:?}");
            let b = p.boxes[0].bbox;
            assert!(b.x1 < b.x2 && b.y1 < b.y2);
            assert!(
                (b.x1 - 100.0).abs() < 1.0 && (b.y2 - 250.0).abs() < 1.0,
                "{c}: {b:?}"
            );
        }
        let zero = [
            (BoxConvention::Pixels, "[10, 10, 10, 50]"),
            (BoxConvention::QwenVl, "<box>(5,5),(5,9)</box>"),
            (BoxConvention::Florence2, "x<loc_5><loc_5><loc_5><loc_9>"),
            (BoxConvention::Qwen25Vl, "{\"bbox_2d\": [1, 1, 1, 1]}"),
        ];
        for (c, text) in zero {
            let p = c.parse(text, &f);
            assert!(p.boxes.is_empty(), "{c}: {p:?}");
            assert!(
                p.rejected.iter().any(|r| r.contains("zero area")),
                "{c}: {:?}",
                p.rejected
            );
        }
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    const TOKENS: &[&str] = &[
        "<p>",
        "</p>",
        "{<",
        "><",
        ">}",
        "<delim>",
        "<phrase>",
        "</phrase>",
        "<object>",
        "</object>",
        "<patch_index_0044>",
        "<patch_index_9999>",
        "</delimiter_of_multi_objects/>",
        "<ref>",
        "</ref>",
        "<box>",
        "</box>",
        "(",
        ")",
        ",",
        "[",
        "]",
        ";",
        "<loc_",
        "<loc_999>",
        "<loc_5>",
        "<r1>",
        "[r3]",
        "r7",
        "<roi>",
        "</roi>",
        "```json\n",
        "```",
        "{\"bbox_2d\": [",
        "\"label\": \"",
        "\"",
        "{",
        "}",
        "0",
        "1",
        "12",
        "999",
        "1000",
        "-3",
        "0.5",
        ".",
        "1e9",
        "NaN",
        "inf",
        " ",
        "\n",
        "dog",
        "é",
        "猫",
        "<|endoftext|>",
        "\u{1}",
        "\\",
    ];

    #[test]
    fn pseudo_random_markup_never_panics() {
        let regions = regions();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..400 {
            let len = (rng.next() % 60) as usize;
            let text: String = (0..len).map(|_| rng.pick(TOKENS)).collect();
            let input = [(0, 0), (640, 480), (1, 1), (3000, 7)][round % 4];
            let f = Frame {
                image: (800, 600),
                input,
                regions: &regions,
            };
            for c in BoxConvention::ALL {
                let p = c.parse(&text, &f);
                assert_sane(&p, &f);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        let bytes: Vec<u8> = (0..10_000).map(|_| (rng.next() >> 24) as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        let regions = regions();
        let f = Frame {
            image: (1000, 1000),
            input: (512, 512),
            regions: &regions,
        };
        for c in BoxConvention::ALL {
            assert_sane(&c.parse(&text, &f), &f);
        }
    }

    #[test]
    fn a_megabyte_of_markup_parses_in_linear_time() {
        use BoxConvention as C;
        // Each piece repeats to ~1 MB: whole boxes, and openings that never close (the inputs
        // that make backtracking parsers quadratic).
        let pieces = [
            (
                C::Kosmos2,
                "<phrase>a</phrase><object><patch_index_0044><patch_index_0863></object> ",
            ),
            (C::Kosmos2, "<object><patch_index_0044>"),
            (C::QwenVl, "<ref>a</ref><box>(1,2),(30,40)</box>"),
            (C::QwenVl, "<box>(1,2),(3,"),
            (C::MiniGptV2, "<p>a</p> {<1><2><3><4>}<delim>"),
            (C::MiniGptV2, "{<1><2><3>"),
            (C::Florence2, "cat<loc_1><loc_2><loc_3><loc_4>"),
            (C::Florence2, "<loc_1>"),
            (
                C::Qwen25Vl,
                "{\"bbox_2d\": [1, 2, 30, 40], \"label\": \"a\"},",
            ),
            (C::Qwen25Vl, "{\"bbox_2d\": ["),
            (C::Qwen25Vl, "```json\n"),
            (C::Shikra, "[0.1,0.2,0.3,0.4;"),
            (C::Ferret, "[1, 2, 3,"),
            (C::Pixels, "[a](1,2,30,40) "),
            (C::Pixels, "[2019, 2020, 2021, 2022]"),
            (C::RegionIds, "<p>a</p><roi><r1></roi> r3 [r9] "),
            (C::RegionIds, "r"),
        ];
        let regions = regions();
        let f = Frame {
            image: (1000, 1000),
            input: (1000, 1000),
            regions: &regions,
        };
        // Quadratic work on 1 MB would take hours; linear work takes well under a second each,
        // even unoptimised.
        let timed = |c: BoxConvention, text: &str| {
            let t = Instant::now();
            let p = c.parse(text, &f);
            assert_sane(&p, &f);
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{c}: {:?}",
                t.elapsed()
            );
        };
        for (c, piece) in pieces {
            timed(c, &piece.repeat(1_000_000 / piece.len()));
        }
        let unit: String = pieces.iter().map(|(_, p)| *p).collect();
        let mixed = unit.repeat(1_000_000 / unit.len() + 1);
        assert!(mixed.len() > 1_000_000);
        for c in BoxConvention::ALL {
            timed(c, &mixed);
        }
    }

    #[test]
    fn rejections_are_capped() {
        let text = "{<a><b><c><d>}".repeat(1000);
        let p = BoxConvention::MiniGptV2.parse(&text, &frame((10, 10), (0, 0)));
        assert_eq!(p.rejected.len(), MAX_REJECTED + 1);
        assert!(
            p.rejected[MAX_REJECTED].contains("800 more"),
            "{:?}",
            p.rejected.last()
        );
    }

    #[test]
    fn tidy_collapses_whitespace_and_markup_gaps() {
        assert_eq!(
            tidy("  a \t b  \n\n\n\n c \u{1} . d\u{1}e "),
            "a b\n\nc. d e"
        );
        assert_eq!(tidy("wait . keep"), "wait . keep");
        assert_eq!(tidy("x<|im_end|>"), "x");
    }
}
