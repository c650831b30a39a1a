//! The dominant colours of a region, named: the pixel core of the colour agent.
//!
//! A question such as "what colour is the taxi" is answered from the pixels inside the box a
//! detector or the OCR found. Three things make the raw pixel statistics misleading, and each
//! has its remedy here:
//!
//! * **Distances must mean what the eye sees.** Clustering and every threshold work in
//!   CIELAB (D65), where a Euclidean distance (ΔE76) means roughly the same visible
//!   difference anywhere (about 2 is just noticeable, 10 plainly another colour); in sRGB the
//!   same numeric step is invisible among bright greens and large among dark blues.
//! * **A box is not the object.** A rectangle around a taxi also holds road at its corners
//!   and along its edges. A ring at the box border (and, where the image extends past the
//!   box, a ring just outside it) samples the surroundings; a colour that is frequent in the
//!   ring but clearly rarer at the box centre is background, and pixels close to it count
//!   little. Comparing ring and centre, rather than trusting the ring alone, keeps the colour
//!   of an object that fills its box (a tight box's ring is mostly object). Pixels near the
//!   centre also count more than those near the border.
//! * **Light is not paint.** A shadow scales the light a surface reflects. In CIELAB that
//!   scales `L*+16`, `a*` and `b*` together (all are cube roots of XYZ), so `a*/(L*+16)` and
//!   `b*/(L*+16)` do not change: a shadowed yellow has the chromaticity of the lit yellow,
//!   only darker. Clusters whose chromaticities agree are merged as one surface and reported
//!   by their lit part — "yellow", not "yellow and brown". Gray clusters are not merged this
//!   way (a black-and-white object stays two colours), so a shadowed white may come back as
//!   white and gray. Near-black and glare-white pixels of low chroma count less unless they
//!   are the bulk of the object: they say more about light than about paint.
//!
//! Clusters that are still apart but earn the same chromatic name (two shades of red) are
//! reported as one colour, so the answer to "what colour is it" ranks by name.
//!
//! Names come in two grains. [`NamedColour::name`] is one of Berlin & Kay's eleven basic
//! colour terms, spelled `black white gray red orange yellow green blue purple pink brown`
//! ("gray" as in the CSS keywords below, so both fields spell it alike), decided by
//! documented rules on lightness, chroma and hue ([`basic_colour_name`]).
//! [`NamedColour::detail`] is the nearest CSS Color Module Level 4 keyword by CIEDE2000
//! ([`css_colour_name`]), e.g. "gold" or "navy".
//!
//! Everything is deterministic: a fixed grid of samples and k-means++ seeded by a fixed
//! linear congruential generator give the same answer for the same pixels every time.

use std::sync::OnceLock;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::crop::Rect;
use super::geometry::BBox;

/// Tuning of [`dominant_colours`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColourOptions {
    /// Report at most this many colours (1 to 12).
    pub max_colours: usize,
    /// Leave out colours holding less than this share of the weighted object pixels (the
    /// first colour is always reported).
    pub min_share: f32,
    /// Sample at most this many pixels of the box, on a regular grid.
    pub max_pixels: u32,
    /// Thickness of the ring that samples the background, as a fraction of the box's shorter
    /// side (0 to 0.5); 0 turns background discounting off.
    pub border: f32,
    /// At most this many k-means iterations.
    pub iterations: usize,
}

impl Default for ColourOptions {
    fn default() -> Self {
        Self {
            max_colours: 3,
            min_share: 0.08,
            max_pixels: 40_000,
            border: 0.12,
            iterations: 12,
        }
    }
}

impl ColourOptions {
    fn check(&self) -> Result<(), ColourError> {
        let problem = if !(1..=MAX_COLOURS).contains(&self.max_colours) {
            "max_colours must be 1 to 12"
        } else if !(0.0..1.0).contains(&self.min_share) {
            "min_share must be at least 0 and below 1"
        } else if self.max_pixels == 0 {
            "max_pixels must be at least 1"
        } else if !(0.0..=0.5).contains(&self.border) {
            "border must be 0 to 0.5"
        } else if !(1..=1000).contains(&self.iterations) {
            "iterations must be 1 to 1000"
        } else {
            return Ok(());
        };
        Err(ColourError::Options(problem.to_string()))
    }
}

/// One dominant colour of a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedColour {
    /// A basic colour term: black, white, gray, red, orange, yellow, green, blue, purple,
    /// pink or brown.
    pub name: String,
    /// The nearest CSS colour keyword (CIEDE2000), e.g. "gold", "navy", "darkslategray".
    pub detail: String,
    /// The colour in sRGB.
    pub rgb: [u8; 3],
    /// The colour in CIELAB (D65), to 0.1.
    pub lab: [f32; 3],
    /// Its share of the object's pixels after background, shadows and glare are discounted
    /// (to 0.001). Shares of the reported colours may add up to less than 1: the rest went
    /// to colours under `min_share` or beyond `max_colours`.
    pub share: f32,
}

/// Why a region has no colours to report.
#[derive(Debug, thiserror::Error)]
pub enum ColourError {
    #[error("the image has no pixels ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("box {bbox:?} is empty or not finite: it needs x2 > x1 and y2 > y1")]
    DegenerateBox { bbox: [f32; 4] },
    #[error("box {bbox:?} lies outside the {width}x{height} image")]
    OutsideImage {
        bbox: [f32; 4],
        width: u32,
        height: u32,
    },
    #[error("invalid colour options: {0}")]
    Options(String),
}

const MAX_COLOURS: usize = 12;
/// Clusters closer than this (ΔE76, or relit ΔE for shading) are one colour.
const MERGE_DE: f32 = 10.0;
/// A shading merge reports the lighter cluster, unless it holds less than this share of the
/// pair: then the surface is mostly seen in shadow and the darker cluster is what one sees.
const LIT_MIN_SHARE: f32 = 0.2;
/// Centre weight `exp(-(u² + v²) / 2σ²)` with `u, v` in -1..1 across the box: edge middles
/// count a quarter, corners a sixteenth of the centre.
const CENTRE_SIGMA: f32 = 0.6;
/// The central region compared with the ring: the middle half of the box in each direction.
const CORE_HALF: f32 = 0.5;
/// The ring is read as up to this many colours.
const BG_CLUSTERS: usize = 3;
const BG_ITERATIONS: usize = 8;
/// Fewer ring samples than this say too little about the surroundings.
const MIN_RING_SAMPLES: usize = 8;
/// A pixel matches a background colour within this distance.
const BG_MATCH: f32 = 11.0;
/// A ring colour is background if at least this share of the ring matches it ...
const BG_FREQUENT: f32 = 0.2;
/// ... and the centre matches it less than this fraction as often as the ring does.
const BG_CONTRAST: f32 = 0.5;
/// Background pixels keep this much weight; the discount ramps in between these distances.
const BG_KEEP: f32 = 0.05;
const BG_NEAR: f32 = 9.0;
const BG_FAR: f32 = 13.0;
/// Murky (near-black, low-chroma) and glare (near-white, low-chroma) pixels.
const MURKY_L: f32 = 25.0;
const MURKY_C: f32 = 15.0;
const GLARE_L: f32 = 90.0;
const GLARE_C: f32 = 10.0;
/// Such pixels keep this much weight, unless they hold at least `TONE_BULK` of the object.
const TONE_KEEP: f32 = 0.5;
const TONE_BULK: f32 = 0.5;
/// Relighting divides by `L*+16`; below this floor (L* < 4) quantisation noise would be
/// amplified into colour.
const RELIT_FLOOR: f32 = 20.0;
/// Both colours need this much relit chroma for a shading merge: grays have no chromaticity
/// to compare.
const RELIT_MIN_CHROMA: f32 = 15.0;

/// The dominant colours of `bbox` in `img` (the whole image when `bbox` is `None`), most
/// dominant first: at most `max_colours`, each holding at least `min_share`, except that the
/// first is always reported. The box is in image pixels and is clipped to the image; an
/// empty or non-finite box, one wholly outside the image, an empty image or invalid options
/// are errors.
pub fn dominant_colours(
    img: &RgbImage,
    bbox: Option<BBox>,
    opts: &ColourOptions,
) -> Result<Vec<NamedColour>, ColourError> {
    opts.check()?;
    let region = pixel_region(img, bbox)?;
    let samples = sample_region(img, region, opts);
    let background = background_colours(&samples);
    let (points, weights) = object_weights(&samples, &background);
    let total: f32 = weights.iter().sum();
    if points.is_empty() || total <= 0.0 {
        return Ok(Vec::new());
    }
    // Two spare clusters take up edges, noise and stray colours, which would otherwise pull
    // the centres of the colours that matter; the merges below fold back what is not apart.
    let clusters = kmeans(&points, &weights, opts.max_colours + 2, opts.iterations);
    let clusters = merge_while(clusters, delta_e76, weighted_mean);
    let clusters = merge_while(clusters, surface_distance, lit_member);
    Ok(merge_same_name(clusters)
        .iter()
        .enumerate()
        .filter(|(i, (c, _, _))| *i == 0 || c.weight / total >= opts.min_share)
        .take(opts.max_colours)
        .map(|(_, (c, name, detail))| named(c, name, detail, total))
        .collect())
}

fn by_weight(a: &Cluster, b: &Cluster) -> std::cmp::Ordering {
    b.weight
        .total_cmp(&a.weight)
        .then(b.lab[0].total_cmp(&a.lab[0]))
}

/// Chromatic clusters that earn the same basic name are one answer to "what colour is it":
/// their weights add up, under the colour of the heaviest. Otherwise two shades of red, each
/// smaller than a third colour, would rank red below it. Black, white and gray clusters are
/// pooled only when their CSS names agree too: they are as often shadow, glare or the rim
/// where two colours blend (white letters on navy leave a gray rim) as paint, and pooled
/// they would outrank the paint.
fn merge_same_name(mut clusters: Vec<Cluster>) -> Vec<(Cluster, &'static str, &'static str)> {
    clusters.sort_by(by_weight);
    let mut out: Vec<(Cluster, &'static str, &'static str)> = Vec::new();
    for c in clusters {
        let (name, detail) = (basic_colour_name(c.lab), css_colour_name(c.lab));
        let neutral = matches!(name, "black" | "white" | "gray");
        let same = |n: &str, d: &str| n == name && (!neutral || d == detail);
        match out.iter_mut().find(|(_, n, d)| same(n, d)) {
            Some((kept, _, _)) => kept.weight += c.weight,
            None => out.push((c, name, detail)),
        }
    }
    out.sort_by(|a, b| by_weight(&a.0, &b.0));
    out
}

fn named(c: &Cluster, name: &str, detail: &str, total: f32) -> NamedColour {
    let round = |v: f32, scale: f32| (v * scale).round() / scale;
    NamedColour {
        name: name.to_string(),
        detail: detail.to_string(),
        rgb: lab_to_srgb(c.lab),
        lab: c.lab.map(|v| round(v, 10.0)),
        share: round(c.weight / total, 1000.0),
    }
}

/// The whole pixels `bbox` covers, at least one.
fn pixel_region(img: &RgbImage, bbox: Option<BBox>) -> Result<Rect, ColourError> {
    let (width, height) = img.dimensions();
    if width == 0 || height == 0 {
        return Err(ColourError::EmptyImage { width, height });
    }
    let Some(b) = bbox else {
        return Ok(Rect::full(img));
    };
    let coords: [f32; 4] = b.into();
    if !coords.iter().all(|v| v.is_finite()) || b.x2 <= b.x1 || b.y2 <= b.y1 {
        return Err(ColourError::DegenerateBox { bbox: coords });
    }
    let c = b.clamp(width as f32, height as f32);
    if c.x2 <= c.x1 || c.y2 <= c.y1 {
        return Err(ColourError::OutsideImage {
            bbox: coords,
            width,
            height,
        });
    }
    // A box thinner than a pixel still means the pixel it lies on.
    let x = (c.x1.round() as u32).min(width - 1);
    let y = (c.y1.round() as u32).min(height - 1);
    let x_end = (c.x2.round() as u32).clamp(x + 1, width);
    let y_end = (c.y2.round() as u32).clamp(y + 1, height);
    Ok(Rect {
        x,
        y,
        width: x_end - x,
        height: y_end - y,
    })
}

/// One sampled pixel and where it lies relative to the box.
#[derive(Debug, Clone, Copy)]
struct Sample {
    lab: [f32; 3],
    inside: bool,
    /// In the border ring (inside the box near its edge, or just outside it).
    ring: bool,
    /// In the middle of the box.
    core: bool,
    /// Centre weight (0 outside the box).
    centre: f32,
}

/// Grid steps `(x, y)` that sample a `width x height` box with at most `budget` pixels.
fn grid_steps(width: u32, height: u32, budget: u32) -> (u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let step = (area / f64::from(budget.max(1))).sqrt().ceil().max(1.0) as u32;
    // A box narrower than the step is sampled across its whole width, and in fewer rows to
    // stay in budget; one so long that a row alone would exceed it is sampled more sparsely.
    let step_x = step.min(width).max(width.div_ceil(budget.max(1))).max(1);
    let cols = width.div_ceil(step_x);
    let rows = (budget / cols).max(1);
    let step_y = height.div_ceil(rows).max(1);
    (step_x, step_y)
}

/// Grid positions from `lo` to `hi` (exclusive), aligned on `origin`.
fn grid_axis(lo: u32, hi: u32, origin: u32, step: u32) -> impl Iterator<Item = u32> {
    let first = origin - (origin - lo) / step * step;
    (first..hi).step_by(step as usize)
}

/// Samples the box on a grid, and the ring of the same thickness just outside it.
fn sample_region(img: &RgbImage, region: Rect, opts: &ColourOptions) -> Vec<Sample> {
    let (step_x, step_y) = grid_steps(region.width, region.height, opts.max_pixels);
    let short = region.width.min(region.height) as f32;
    let band = if opts.border > 0.0 {
        ((opts.border * short).round() as u32).max(1)
    } else {
        0
    };
    let (x0, y0) = (region.x, region.y);
    let (x1, y1) = (x0 + region.width, y0 + region.height);
    let (lo_x, hi_x) = (
        x0.saturating_sub(band),
        x1.saturating_add(band).min(img.width()),
    );
    let (lo_y, hi_y) = (
        y0.saturating_sub(band),
        y1.saturating_add(band).min(img.height()),
    );
    let half_w = region.width as f32 / 2.0;
    let half_h = region.height as f32 / 2.0;
    let two_sigma2 = 2.0 * CENTRE_SIGMA * CENTRE_SIGMA;
    let mut out = Vec::new();
    for py in grid_axis(lo_y, hi_y, y0 + step_y / 2, step_y) {
        for px in grid_axis(lo_x, hi_x, x0 + step_x / 2, step_x) {
            let inside = (x0..x1).contains(&px) && (y0..y1).contains(&py);
            let mut s = Sample {
                lab: srgb_to_lab(img.get_pixel(px, py).0),
                inside,
                ring: !inside,
                core: false,
                centre: 0.0,
            };
            if inside {
                let edge = (px - x0).min(x1 - 1 - px).min(py - y0).min(y1 - 1 - py);
                let u = (px as f32 + 0.5 - x0 as f32 - half_w) / half_w;
                let v = (py as f32 + 0.5 - y0 as f32 - half_h) / half_h;
                s.ring = edge < band;
                s.core = u.abs() < CORE_HALF && v.abs() < CORE_HALF;
                s.centre = (-(u * u + v * v) / two_sigma2).exp();
            }
            out.push(s);
        }
    }
    out
}

/// Colours of the surroundings: frequent in the ring, clearly rarer in the box's middle.
fn background_colours(samples: &[Sample]) -> Vec<[f32; 3]> {
    let ring: Vec<[f32; 3]> = samples.iter().filter(|s| s.ring).map(|s| s.lab).collect();
    let core: Vec<[f32; 3]> = samples.iter().filter(|s| s.core).map(|s| s.lab).collect();
    if ring.len() < MIN_RING_SAMPLES || core.is_empty() {
        return Vec::new();
    }
    let share = |set: &[[f32; 3]], c: &[f32; 3]| {
        let hits = set
            .iter()
            .filter(|p| surface_distance(p, c) < BG_MATCH)
            .count();
        hits as f32 / set.len() as f32
    };
    let ones = vec![1.0; ring.len()];
    kmeans(&ring, &ones, BG_CLUSTERS, BG_ITERATIONS)
        .into_iter()
        .map(|c| c.lab)
        .filter(|c| {
            let in_ring = share(&ring, c);
            in_ring >= BG_FREQUENT && share(&core, c) < BG_CONTRAST * in_ring
        })
        .collect()
}

/// The box's samples and their weights: centre weight, background and tone discounts.
fn object_weights(samples: &[Sample], background: &[[f32; 3]]) -> (Vec<[f32; 3]>, Vec<f32>) {
    let (mut points, mut weights) = (Vec::new(), Vec::new());
    for s in samples.iter().filter(|s| s.inside) {
        let d = background
            .iter()
            .map(|b| surface_distance(&s.lab, b))
            .fold(f32::INFINITY, f32::min);
        let background = BG_KEEP + (1.0 - BG_KEEP) * ramp(d, BG_NEAR, BG_FAR);
        points.push(s.lab);
        weights.push(s.centre * background);
    }
    discount_tones(&points, &mut weights);
    (points, weights)
}

/// 0 at or below `lo`, 1 at or above `hi`, linear between.
fn ramp(v: f32, lo: f32, hi: f32) -> f32 {
    ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
}

fn is_murky(lab: &[f32; 3]) -> bool {
    lab[0] < MURKY_L && chroma(lab) < MURKY_C
}

fn is_glare(lab: &[f32; 3]) -> bool {
    lab[0] > GLARE_L && chroma(lab) < GLARE_C
}

/// Murky shadows and glare count less, unless they are most of the object (a black car, a
/// white sign), when they are its colour.
fn discount_tones(points: &[[f32; 3]], weights: &mut [f32]) {
    let total: f32 = weights.iter().sum();
    let mass = |class: fn(&[f32; 3]) -> bool| -> f32 {
        let pairs = points.iter().zip(weights.iter());
        pairs.filter(|(p, _)| class(p)).map(|(_, w)| w).sum()
    };
    let murky = mass(is_murky) < TONE_BULK * total;
    let glare = mass(is_glare) < TONE_BULK * total;
    for (p, w) in points.iter().zip(weights.iter_mut()) {
        if (murky && is_murky(p)) || (glare && is_glare(p)) {
            *w *= TONE_KEEP;
        }
    }
}

/// A colour cluster: its representative colour and total weight.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cluster {
    lab: [f32; 3],
    weight: f32,
}

/// A fixed-seed linear congruential generator (Knuth's MMIX constants): reproducible
/// k-means++ seeding without a dependency.
struct Lcg(u64);

impl Lcg {
    fn new() -> Self {
        Self(0x5EED_C010_0A11_0001)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dist2(p: &[f32; 3], q: &[f32; 3]) -> f32 {
    (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)
}

/// The index whose cumulative `mass` first passes `target` (the last positive one if rounding
/// runs past the end).
fn pick(mass: &[f64], target: f64) -> usize {
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &m) in mass.iter().enumerate() {
        if m > 0.0 {
            acc += m;
            last = i;
            if acc > target {
                return i;
            }
        }
    }
    last
}

/// k-means++ seeding: each next centre is drawn with probability proportional to weight
/// times squared distance to the nearest centre so far. Stops early when every point sits on
/// a centre (fewer distinct colours than `k`).
fn seed_centres(points: &[[f32; 3]], weights: &[f32], k: usize) -> Vec<[f32; 3]> {
    let mut rng = Lcg::new();
    let w: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(0.0))).collect();
    let total: f64 = w.iter().sum();
    if points.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    let mut centres = vec![points[pick(&w, rng.next_f64() * total)]];
    let mut d2: Vec<f64> = points
        .iter()
        .map(|p| f64::from(dist2(p, &centres[0])))
        .collect();
    while centres.len() < k {
        let mass: Vec<f64> = w.iter().zip(&d2).map(|(w, d)| w * d).collect();
        let sum: f64 = mass.iter().sum();
        if sum <= 0.0 {
            break;
        }
        let c = points[pick(&mass, rng.next_f64() * sum)];
        for (d, p) in d2.iter_mut().zip(points) {
            *d = d.min(f64::from(dist2(p, &c)));
        }
        centres.push(c);
    }
    centres
}

fn nearest(centres: &[[f32; 3]], p: &[f32; 3]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (i, c) in centres.iter().enumerate() {
        let d = dist2(p, c);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

/// Weighted k-means (Lloyd) in CIELAB; empty clusters are dropped.
fn kmeans(points: &[[f32; 3]], weights: &[f32], k: usize, iterations: usize) -> Vec<Cluster> {
    let mut centres = seed_centres(points, weights, k);
    if centres.is_empty() {
        return Vec::new();
    }
    let mut assign = vec![usize::MAX; points.len()];
    let mut clusters = Vec::new();
    for _ in 0..iterations.max(1) {
        let mut changed = false;
        for (a, p) in assign.iter_mut().zip(points) {
            let n = nearest(&centres, p);
            changed |= *a != n;
            *a = n;
        }
        let mut sums = vec![[0f64; 4]; centres.len()];
        for ((p, &w), &a) in points.iter().zip(weights).zip(&assign) {
            let w = f64::from(w.max(0.0));
            for c in 0..3 {
                sums[a][c] += w * f64::from(p[c]);
            }
            sums[a][3] += w;
        }
        clusters = sums
            .iter()
            .zip(&centres)
            .map(|(s, old)| Cluster {
                lab: if s[3] > 0.0 {
                    [0, 1, 2].map(|c| (s[c] / s[3]) as f32)
                } else {
                    *old
                },
                weight: s[3] as f32,
            })
            .collect();
        centres = clusters.iter().map(|c| c.lab).collect();
        if !changed {
            break;
        }
    }
    clusters.retain(|c| c.weight > 0.0);
    clusters
}

/// Repeatedly merges the closest pair of clusters while it is closer than [`MERGE_DE`].
fn merge_while(
    mut clusters: Vec<Cluster>,
    distance: fn(&[f32; 3], &[f32; 3]) -> f32,
    combine: fn(&Cluster, &Cluster) -> [f32; 3],
) -> Vec<Cluster> {
    loop {
        let mut best: Option<(f32, usize, usize)> = None;
        for (i, a) in clusters.iter().enumerate() {
            for (j, b) in clusters.iter().enumerate().skip(i + 1) {
                let d = distance(&a.lab, &b.lab);
                if d < MERGE_DE && best.is_none_or(|(bd, _, _)| d < bd) {
                    best = Some((d, i, j));
                }
            }
        }
        let Some((_, i, j)) = best else {
            return clusters;
        };
        let b = clusters.swap_remove(j);
        let a = clusters[i];
        clusters[i] = Cluster {
            lab: combine(&a, &b),
            weight: a.weight + b.weight,
        };
    }
}

fn weighted_mean(a: &Cluster, b: &Cluster) -> [f32; 3] {
    let w = a.weight + b.weight;
    [0, 1, 2].map(|c| (a.lab[c] * a.weight + b.lab[c] * b.weight) / w)
}

/// One surface seen lit and in shadow is reported by its lit part: the paint's colour.
fn lit_member(a: &Cluster, b: &Cluster) -> [f32; 3] {
    let (lit, dim) = if a.lab[0] >= b.lab[0] { (a, b) } else { (b, a) };
    if lit.weight >= LIT_MIN_SHARE * (a.weight + b.weight) {
        lit.lab
    } else {
        dim.lab
    }
}

// ---------------------------------------------------------------------------------------
// Colour science.

/// D65 reference white, XYZ with Y = 1. The conversions run in f64 so the published
/// constants are used as printed.
const WHITE: [f64; 3] = [0.95047, 1.0, 1.08883];
/// CIE ε = (6/29)³ and κ = (29/3)³, exact.
const EPSILON: f64 = 216.0 / 24389.0;
const KAPPA: f64 = 24389.0 / 27.0;
/// Linear sRGB to XYZ (D65), IEC 61966-2-1.
const RGB_TO_XYZ: [[f64; 3]; 3] = [
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
];
const XYZ_TO_RGB: [[f64; 3]; 3] = [
    [3.2404542, -1.5371385, -0.4985314],
    [-0.9692660, 1.8760108, 0.0415560],
    [0.0556434, -0.2040259, 1.0572252],
];

fn mat_vec(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    m.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2])
}

fn srgb_decode(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn srgb_encode(v: f64) -> f64 {
    if v <= 0.0031308 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// Byte to linear light, computed once: every sample needs three.
fn linear_table() -> &'static [f64; 256] {
    static TABLE: OnceLock<[f64; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| srgb_decode(i as f64 / 255.0)))
}

fn lab_f(t: f64) -> f64 {
    if t > EPSILON {
        t.cbrt()
    } else {
        (KAPPA * t + 16.0) / 116.0
    }
}

fn lab_f_inv(f: f64) -> f64 {
    let cube = f * f * f;
    if cube > EPSILON {
        cube
    } else {
        (116.0 * f - 16.0) / KAPPA
    }
}

/// An sRGB byte triple in CIELAB (D65).
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f32; 3] {
    let table = linear_table();
    let xyz = mat_vec(&RGB_TO_XYZ, rgb.map(|c| table[usize::from(c)]));
    let [fx, fy, fz] = [0, 1, 2].map(|i| lab_f(xyz[i] / WHITE[i]));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)].map(|v| v as f32)
}

fn lab_to_xyz(lab: [f32; 3]) -> [f64; 3] {
    let [l, a, b] = lab.map(f64::from);
    let fy = (l + 16.0) / 116.0;
    let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
    // Below the knee (L* = κε = 8) the forward transform was linear in Y: invert that line.
    let y = if l > KAPPA * EPSILON {
        fy * fy * fy
    } else {
        l / KAPPA
    };
    [lab_f_inv(fx) * WHITE[0], y, lab_f_inv(fz) * WHITE[2]]
}

/// A CIELAB colour in sRGB bytes, clipped to the gamut.
pub fn lab_to_srgb(lab: [f32; 3]) -> [u8; 3] {
    mat_vec(&XYZ_TO_RGB, lab_to_xyz(lab)).map(|v| {
        (srgb_encode(v.clamp(0.0, 1.0)) * 255.0)
            .round()
            .clamp(0.0, 255.0) as u8
    })
}

fn chroma(lab: &[f32; 3]) -> f32 {
    lab[1].hypot(lab[2])
}

/// CIE76 colour difference: Euclidean distance in CIELAB.
pub fn delta_e76(p: &[f32; 3], q: &[f32; 3]) -> f32 {
    dist2(p, q).sqrt()
}

/// How different two colours are as surfaces: ΔE76, or for two chromatic colours at most
/// the ΔE of their `a*, b*` once the darker is relit to the lighter's lightness (a shadow
/// scales `L*+16`, `a*` and `b*` alike).
fn surface_distance(p: &[f32; 3], q: &[f32; 3]) -> f32 {
    let plain = delta_e76(p, q);
    let top = p[0].max(q[0]) + 16.0;
    let gain = |c: &[f32; 3]| top / (c[0] + 16.0).max(RELIT_FLOOR);
    let (gp, gq) = (gain(p), gain(q));
    if chroma(p) * gp < RELIT_MIN_CHROMA || chroma(q) * gq < RELIT_MIN_CHROMA {
        return plain;
    }
    let relit = (p[1] * gp - q[1] * gq).hypot(p[2] * gp - q[2] * gq);
    plain.min(relit)
}

/// CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), with kL = kC = kH = 1.
pub fn ciede2000(p: &[f32; 3], q: &[f32; 3]) -> f32 {
    ciede2000_f64(p.map(f64::from), q.map(f64::from)) as f32
}

/// Hue angle in degrees, 0..360, and 0 for a neutral colour (as CIEDE2000 defines it).
fn hue_deg(b: f64, a: f64) -> f64 {
    if a == 0.0 && b == 0.0 {
        0.0
    } else {
        b.atan2(a).to_degrees().rem_euclid(360.0)
    }
}

fn ciede2000_f64(p: [f64; 3], q: [f64; 3]) -> f64 {
    let pow7 = |v: f64| v.powi(7);
    let c_bar = (p[1].hypot(p[2]) + q[1].hypot(q[2])) / 2.0;
    let g = 0.5 * (1.0 - (pow7(c_bar) / (pow7(c_bar) + pow7(25.0))).sqrt());
    let (a1, a2) = ((1.0 + g) * p[1], (1.0 + g) * q[1]);
    let (c1, c2) = (a1.hypot(p[2]), a2.hypot(q[2]));
    let (h1, h2) = (hue_deg(p[2], a1), hue_deg(q[2], a2));
    let neutral = c1 * c2 == 0.0;
    let dh = match h2 - h1 {
        _ if neutral => 0.0,
        d if d > 180.0 => d - 360.0,
        d if d < -180.0 => d + 360.0,
        d => d,
    };
    let d_l = q[0] - p[0];
    let d_c = c2 - c1;
    let d_h = 2.0 * (c1 * c2).sqrt() * (dh / 2.0).to_radians().sin();
    let l_bar = (p[0] + q[0]) / 2.0;
    let c_bar = (c1 + c2) / 2.0;
    let h_bar = if neutral {
        h1 + h2
    } else if (h1 - h2).abs() <= 180.0 {
        (h1 + h2) / 2.0
    } else if h1 + h2 < 360.0 {
        (h1 + h2 + 360.0) / 2.0
    } else {
        (h1 + h2 - 360.0) / 2.0
    };
    let cos = |deg: f64| deg.to_radians().cos();
    let t =
        1.0 - 0.17 * cos(h_bar - 30.0) + 0.24 * cos(2.0 * h_bar) + 0.32 * cos(3.0 * h_bar + 6.0)
            - 0.20 * cos(4.0 * h_bar - 63.0);
    let d_theta = 30.0 * (-((h_bar - 275.0) / 25.0).powi(2)).exp();
    let r_c = 2.0 * (pow7(c_bar) / (pow7(c_bar) + pow7(25.0))).sqrt();
    let l50 = (l_bar - 50.0).powi(2);
    let s_l = 1.0 + 0.015 * l50 / (20.0 + l50).sqrt();
    let s_c = 1.0 + 0.045 * c_bar;
    let s_h = 1.0 + 0.015 * c_bar * t;
    let r_t = -(2.0 * d_theta).to_radians().sin() * r_c;
    let (l, c, h) = (d_l / s_l, d_c / s_c, d_h / s_h);
    (l * l + c * c + h * h + r_t * c * h).sqrt()
}

/// Oklab's hue angle in degrees. CIELAB's hue bends in the blues: pure blue and CSS
/// `mediumpurple` share a CIELAB hue of 306°, so no CIELAB hue boundary separates blue from
/// purple. Oklab was fitted to keep perceived hue constant (blue 264°, mediumpurple 297°).
fn oklab_hue(lab: [f32; 3]) -> f32 {
    const XYZ_TO_LMS: [[f64; 3]; 3] = [
        [0.8189330101, 0.3618667424, -0.1288597137],
        [0.0329845436, 0.9293118715, 0.0361456387],
        [0.0482003018, 0.2643662691, 0.6338517070],
    ];
    let [l, m, s] = mat_vec(&XYZ_TO_LMS, lab_to_xyz(lab)).map(f64::cbrt);
    let a = 1.9779984951 * l - 2.4285922050 * m + 0.4505937099 * s;
    let b = 0.0259040371 * l + 0.7827717662 * m - 0.8086757660 * s;
    b.atan2(a).to_degrees().rem_euclid(360.0) as f32
}

// ---------------------------------------------------------------------------------------
// Naming.

/// Below this CIELAB chroma a colour reads as black, gray or white.
const NEUTRAL_C: f32 = 13.0;
/// Pale tints (ivory, beige, lavender) read as white ...
const PALE_L: f32 = 90.0;
const PALE_C: f32 = 20.0;
/// ... and very dark colours as black: their chroma is mostly noise.
const DEEP_L: f32 = 12.0;
const DEEP_C: f32 = 20.0;
/// Neutral lightness bands: black below, white at or above.
const BLACK_L: f32 = 30.0;
const WHITE_L: f32 = 82.0;

/// The basic colour term (Berlin & Kay's eleven) of a CIELAB colour.
///
/// Neutral when chroma C* < 13, when pale (L* >= 90, C* < 20) or very dark (L* < 12,
/// C* < 20): black below L* 30, white from L* 82, gray between. Otherwise by Oklab hue h
/// (degrees), with lightness and chroma for the terms that are lightness variants of a hue:
///
/// * h >= 340 or h < 15: pink, or red below L* 40 (burgundy).
/// * 15..40: red; pink when light and soft (L* >= 60, C* < 60, and h < 35 or C* < 45:
///   salmon, light coral); brown when dark and dull (h >= 25, L* < 50, C* < 35).
/// * 40..77: orange; brown when dark (L* < 50, or L* < 60 with C* < 60) or dull
///   (C* < 35, L* < 80: tan). Maroon is red, chocolate orange, saddlebrown brown.
/// * 77..115: yellow (taxi yellow #F7B500 is at h 82, CSS orange at 71); below L* 60 it
///   is brown (h < 100, dark goldenrod) or green (olive); dull (C* < 35, L* < 80) is brown.
/// * 115..180 green, 180..290 blue (teal and cyan are blue), 290..340 purple.
pub fn basic_colour_name(lab: [f32; 3]) -> &'static str {
    let [l, _, _] = lab;
    let c = chroma(&lab);
    if c < NEUTRAL_C || (l >= PALE_L && c < PALE_C) || (l < DEEP_L && c < DEEP_C) {
        return if l < BLACK_L {
            "black"
        } else if l >= WHITE_L {
            "white"
        } else {
            "gray"
        };
    }
    let h = oklab_hue(lab);
    let dull = c < 35.0 && l < 80.0;
    match h {
        h if !(15.0..340.0).contains(&h) => {
            if l < 40.0 {
                "red"
            } else {
                "pink"
            }
        }
        h if h < 40.0 => {
            if l >= 60.0 && c < 60.0 && (h < 35.0 || c < 45.0) {
                "pink"
            } else if h >= 25.0 && l < 50.0 && c < 35.0 {
                "brown"
            } else {
                "red"
            }
        }
        h if h < 77.0 => {
            if l < 50.0 || (l < 60.0 && c < 60.0) || dull {
                "brown"
            } else {
                "orange"
            }
        }
        h if h < 115.0 => match (l < 60.0, h >= 100.0) {
            (true, true) => "green",
            (true, false) => "brown",
            _ if dull => "brown",
            _ => "yellow",
        },
        h if h < 180.0 => "green",
        h if h < 290.0 => "blue",
        _ => "purple",
    }
}

/// The CSS Color Module Level 4 named colour nearest to a CIELAB colour by CIEDE2000.
pub fn css_colour_name(lab: [f32; 3]) -> &'static str {
    static LABS: OnceLock<Vec<[f32; 3]>> = OnceLock::new();
    let labs = LABS.get_or_init(|| {
        CSS_COLOURS
            .iter()
            .map(|&(_, hex)| srgb_to_lab([(hex >> 16) as u8, (hex >> 8) as u8, hex as u8]))
            .collect()
    });
    let mut best = (f32::INFINITY, "black");
    for (&(name, _), c) in CSS_COLOURS.iter().zip(labs) {
        let d = ciede2000(&lab, c);
        if d < best.0 {
            best = (d, name);
        }
    }
    best.1
}

/// CSS Color Module Level 4 named colours (`transparent` aside). Synonyms are listed once:
/// the "gray" spellings (not "grey"), cyan (not aqua), magenta (not fuchsia).
#[rustfmt::skip]
const CSS_COLOURS: [(&str, u32); 139] = [
    ("aliceblue", 0xF0F8FF), ("antiquewhite", 0xFAEBD7), ("aquamarine", 0x7FFFD4),
    ("azure", 0xF0FFFF), ("beige", 0xF5F5DC), ("bisque", 0xFFE4C4), ("black", 0x000000),
    ("blanchedalmond", 0xFFEBCD), ("blue", 0x0000FF), ("blueviolet", 0x8A2BE2),
    ("brown", 0xA52A2A), ("burlywood", 0xDEB887), ("cadetblue", 0x5F9EA0),
    ("chartreuse", 0x7FFF00), ("chocolate", 0xD2691E), ("coral", 0xFF7F50),
    ("cornflowerblue", 0x6495ED), ("cornsilk", 0xFFF8DC), ("crimson", 0xDC143C),
    ("cyan", 0x00FFFF), ("darkblue", 0x00008B), ("darkcyan", 0x008B8B),
    ("darkgoldenrod", 0xB8860B), ("darkgray", 0xA9A9A9), ("darkgreen", 0x006400),
    ("darkkhaki", 0xBDB76B), ("darkmagenta", 0x8B008B), ("darkolivegreen", 0x556B2F),
    ("darkorange", 0xFF8C00), ("darkorchid", 0x9932CC), ("darkred", 0x8B0000),
    ("darksalmon", 0xE9967A), ("darkseagreen", 0x8FBC8F), ("darkslateblue", 0x483D8B),
    ("darkslategray", 0x2F4F4F), ("darkturquoise", 0x00CED1), ("darkviolet", 0x9400D3),
    ("deeppink", 0xFF1493), ("deepskyblue", 0x00BFFF), ("dimgray", 0x696969),
    ("dodgerblue", 0x1E90FF), ("firebrick", 0xB22222), ("floralwhite", 0xFFFAF0),
    ("forestgreen", 0x228B22), ("gainsboro", 0xDCDCDC), ("ghostwhite", 0xF8F8FF),
    ("gold", 0xFFD700), ("goldenrod", 0xDAA520), ("gray", 0x808080), ("green", 0x008000),
    ("greenyellow", 0xADFF2F), ("honeydew", 0xF0FFF0), ("hotpink", 0xFF69B4),
    ("indianred", 0xCD5C5C), ("indigo", 0x4B0082), ("ivory", 0xFFFFF0), ("khaki", 0xF0E68C),
    ("lavender", 0xE6E6FA), ("lavenderblush", 0xFFF0F5), ("lawngreen", 0x7CFC00),
    ("lemonchiffon", 0xFFFACD), ("lightblue", 0xADD8E6), ("lightcoral", 0xF08080),
    ("lightcyan", 0xE0FFFF), ("lightgoldenrodyellow", 0xFAFAD2), ("lightgray", 0xD3D3D3),
    ("lightgreen", 0x90EE90), ("lightpink", 0xFFB6C1), ("lightsalmon", 0xFFA07A),
    ("lightseagreen", 0x20B2AA), ("lightskyblue", 0x87CEFA), ("lightslategray", 0x778899),
    ("lightsteelblue", 0xB0C4DE), ("lightyellow", 0xFFFFE0), ("lime", 0x00FF00),
    ("limegreen", 0x32CD32), ("linen", 0xFAF0E6), ("magenta", 0xFF00FF), ("maroon", 0x800000),
    ("mediumaquamarine", 0x66CDAA), ("mediumblue", 0x0000CD), ("mediumorchid", 0xBA55D3),
    ("mediumpurple", 0x9370DB), ("mediumseagreen", 0x3CB371), ("mediumslateblue", 0x7B68EE),
    ("mediumspringgreen", 0x00FA9A), ("mediumturquoise", 0x48D1CC), ("mediumvioletred", 0xC71585),
    ("midnightblue", 0x191970), ("mintcream", 0xF5FFFA), ("mistyrose", 0xFFE4E1),
    ("moccasin", 0xFFE4B5), ("navajowhite", 0xFFDEAD), ("navy", 0x000080), ("oldlace", 0xFDF5E6),
    ("olive", 0x808000), ("olivedrab", 0x6B8E23), ("orange", 0xFFA500), ("orangered", 0xFF4500),
    ("orchid", 0xDA70D6), ("palegoldenrod", 0xEEE8AA), ("palegreen", 0x98FB98),
    ("paleturquoise", 0xAFEEEE), ("palevioletred", 0xDB7093), ("papayawhip", 0xFFEFD5),
    ("peachpuff", 0xFFDAB9), ("peru", 0xCD853F), ("pink", 0xFFC0CB), ("plum", 0xDDA0DD),
    ("powderblue", 0xB0E0E6), ("purple", 0x800080), ("rebeccapurple", 0x663399), ("red", 0xFF0000),
    ("rosybrown", 0xBC8F8F), ("royalblue", 0x4169E1), ("saddlebrown", 0x8B4513),
    ("salmon", 0xFA8072), ("sandybrown", 0xF4A460), ("seagreen", 0x2E8B57), ("seashell", 0xFFF5EE),
    ("sienna", 0xA0522D), ("silver", 0xC0C0C0), ("skyblue", 0x87CEEB), ("slateblue", 0x6A5ACD),
    ("slategray", 0x708090), ("snow", 0xFFFAFA), ("springgreen", 0x00FF7F),
    ("steelblue", 0x4682B4), ("tan", 0xD2B48C), ("teal", 0x008080), ("thistle", 0xD8BFD8),
    ("tomato", 0xFF6347), ("turquoise", 0x40E0D0), ("violet", 0xEE82EE), ("wheat", 0xF5DEB3),
    ("white", 0xFFFFFF), ("whitesmoke", 0xF5F5F5), ("yellow", 0xFFFF00), ("yellowgreen", 0x9ACD32),
];

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn hex(v: u32) -> [u8; 3] {
        [(v >> 16) as u8, (v >> 8) as u8, v as u8]
    }

    fn patch(rgb: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(40, 30, Rgb(rgb))
    }

    /// Adds reproducible noise of up to `amp` per channel, as a camera would.
    fn noisy(img: &mut RgbImage, amp: i32) {
        let mut rng = Lcg(42);
        for p in img.pixels_mut() {
            for c in p.0.iter_mut() {
                let n = (rng.next_f64() * f64::from(2 * amp + 1)) as i32 - amp;
                *c = (i32::from(*c) + n).clamp(0, 255) as u8;
            }
        }
    }

    fn colours(img: &RgbImage, bbox: Option<BBox>) -> Vec<NamedColour> {
        dominant_colours(img, bbox, &ColourOptions::default()).expect("colours")
    }

    fn names(found: &[NamedColour]) -> Vec<&str> {
        found.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn srgb_to_lab_matches_reference_values() {
        let cases = [
            (0xFF0000, [53.24, 80.09, 67.20]),
            (0x00FF00, [87.73, -86.18, 83.18]),
            (0x0000FF, [32.30, 79.19, -107.86]),
            (0xFFFFFF, [100.0, 0.0, 0.0]),
            (0x808080, [53.59, 0.0, 0.0]),
            (0x000000, [0.0, 0.0, 0.0]),
        ];
        for (rgb, want) in cases {
            let got = srgb_to_lab(hex(rgb));
            for c in 0..3 {
                assert!(
                    (got[c] - want[c]).abs() < 0.01,
                    "{rgb:06X}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn lab_to_srgb_inverts_srgb_to_lab() {
        for rgb in [
            0xFF0000, 0x00FF00, 0x0000FF, 0xF7B500, 0x000080, 0x0A0B0C, 0xFFFFFF,
        ] {
            assert_eq!(lab_to_srgb(srgb_to_lab(hex(rgb))), hex(rgb), "{rgb:06X}");
        }
    }

    #[test]
    fn ciede2000_matches_sharma_wu_dalal_test_data() {
        // Table 1 of Sharma, Wu & Dalal (2005): pairs 1, 4, 7, 9-15 (the hue-angle
        // discontinuity), 17-20, 25, 26, 33, 34.
        let pairs: [[f64; 7]; 20] = [
            [50.0, 2.6772, -79.7751, 50.0, 0.0, -82.7485, 2.0425],
            [50.0, -1.3802, -84.2814, 50.0, 0.0, -82.7485, 1.0000],
            [50.0, 0.0, 0.0, 50.0, -1.0, 2.0, 2.3669],
            [50.0, 2.49, -0.001, 50.0, -2.49, 0.0009, 7.1792],
            [50.0, 2.49, -0.001, 50.0, -2.49, 0.0010, 7.1792],
            [50.0, 2.49, -0.001, 50.0, -2.49, 0.0011, 7.2195],
            [50.0, 2.49, -0.001, 50.0, -2.49, 0.0012, 7.2195],
            [50.0, -0.001, 2.49, 50.0, 0.0009, -2.49, 4.8045],
            [50.0, -0.001, 2.49, 50.0, 0.0010, -2.49, 4.8045],
            [50.0, -0.001, 2.49, 50.0, 0.0011, -2.49, 4.7461],
            [50.0, 2.5, 0.0, 50.0, 0.0, -2.5, 4.3065],
            [50.0, 2.5, 0.0, 73.0, 25.0, -18.0, 27.1492],
            [50.0, 2.5, 0.0, 61.0, -5.0, 29.0, 22.8977],
            [50.0, 2.5, 0.0, 56.0, -27.0, -3.0, 31.9030],
            [50.0, 2.5, 0.0, 58.0, 24.0, 15.0, 19.4535],
            [
                60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644,
            ],
            [
                63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630,
            ],
            [
                22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373,
            ],
            [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
            [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
        ];
        for v in pairs {
            let (p, q) = ([v[0], v[1], v[2]], [v[3], v[4], v[5]]);
            let d = ciede2000_f64(p, q);
            assert!((d - v[6]).abs() < 5e-5, "{v:?}: got {d}");
            // Symmetric, as the formula is.
            assert!((ciede2000_f64(q, p) - d).abs() < 1e-9);
        }
    }

    #[test]
    fn basic_names_follow_the_documented_rules() {
        let cases = [
            (0xFFFF00, "yellow"),
            (0xF7B500, "yellow"), // taxi yellow
            (0xFFA500, "orange"),
            (0x000080, "blue"), // navy
            (0x800000, "red"),  // maroon
            (0xFF0000, "red"),
            (0x8B4513, "brown"), // saddlebrown
            (0xD2B48C, "brown"), // tan
            (0xFFC0CB, "pink"),
            (0xFF1493, "pink"),
            (0x800080, "purple"),
            (0x9370DB, "purple"), // mediumpurple: CIELAB hue of pure blue
            (0x6A5ACD, "blue"),   // slateblue
            (0x008080, "blue"),   // teal
            (0x008000, "green"),
            (0x808000, "green"), // olive
            (0x808080, "gray"),
            (0x708090, "gray"),  // slategray
            (0xF5F5DC, "white"), // beige
            (0xFFFFFF, "white"),
            (0x202020, "black"),
            (0x000000, "black"),
        ];
        for (rgb, want) in cases {
            let got = basic_colour_name(srgb_to_lab(hex(rgb)));
            assert_eq!(got, want, "{rgb:06X}");
        }
    }

    #[test]
    fn css_names_are_the_nearest_keyword() {
        for (rgb, want) in [(0xFFD700, "gold"), (0x000080, "navy"), (0x808080, "gray")] {
            assert_eq!(css_colour_name(srgb_to_lab(hex(rgb))), want);
        }
        assert_eq!(css_colour_name(srgb_to_lab([250, 214, 5])), "gold");
    }

    #[test]
    fn pure_patches_are_named() {
        for (rgb, name, detail) in [
            (0xFFFF00, "yellow", "yellow"),
            (0xF7B500, "yellow", "goldenrod"),
            (0x000080, "blue", "navy"),
            (0x800000, "red", "maroon"),
        ] {
            let found = colours(&patch(hex(rgb)), None);
            assert_eq!(found.len(), 1, "{rgb:06X}: {found:?}");
            assert_eq!(
                (found[0].name.as_str(), found[0].detail.as_str()),
                (name, detail)
            );
            assert_eq!(found[0].rgb, hex(rgb));
            assert_eq!(found[0].share, 1.0);
        }
    }

    #[test]
    fn red_disc_on_a_green_field_is_red() {
        let img = RgbImage::from_fn(200, 160, |x, y| {
            let (dx, dy) = (x as f32 + 0.5 - 100.0, y as f32 + 0.5 - 80.0);
            Rgb(if dx * dx + dy * dy < 40.0 * 40.0 {
                [220, 30, 30]
            } else {
                [40, 160, 60]
            })
        });
        let found = colours(&img, Some(BBox::new(50.0, 30.0, 150.0, 130.0)));
        assert_eq!(found[0].name, "red", "{found:?}");
        assert!(found[0].share > 0.9, "{found:?}");
        // Without the background ring the field is a third of the centre-weighted pixels.
        let opts = ColourOptions {
            border: 0.0,
            ..ColourOptions::default()
        };
        let bbox = Some(BBox::new(50.0, 30.0, 150.0, 130.0));
        let plain = dominant_colours(&img, bbox, &opts).expect("colours");
        assert_eq!(names(&plain), ["red", "green"]);
    }

    #[test]
    fn a_taxi_filling_its_box_keeps_its_colour_and_loses_the_road() {
        // An ellipse touching all four sides of its box: road shows only in the corners.
        let img = RgbImage::from_fn(240, 160, |x, y| {
            let (u, v) = (
                (x as f32 + 0.5 - 120.0) / 80.0,
                (y as f32 + 0.5 - 80.0) / 50.0,
            );
            Rgb(if u * u + v * v < 1.0 {
                [247, 181, 0]
            } else {
                [90, 90, 96]
            })
        });
        let bbox = Some(BBox::new(40.0, 30.0, 200.0, 130.0));
        let road_share = |border: f32| {
            let opts = ColourOptions {
                border,
                min_share: 0.0,
                ..ColourOptions::default()
            };
            let found = dominant_colours(&img, bbox, &opts).expect("colours");
            assert_eq!(found[0].name, "yellow", "{found:?}");
            found.get(1).map_or(0.0, |c| c.share)
        };
        assert!(road_share(0.0) > 0.05);
        assert!(road_share(0.12) < 0.01);
        assert_eq!(names(&colours(&img, bbox)), ["yellow"]);
        // A box that is all taxi: the ring is taxi too, and nothing is discounted.
        let found = colours(&img, Some(BBox::new(90.0, 60.0, 150.0, 100.0)));
        assert_eq!(names(&found), ["yellow"]);
        assert_eq!(found[0].share, 1.0);
    }

    #[test]
    fn a_half_shadowed_yellow_is_one_yellow() {
        // The right half in shadow: 40 % of the lit pixel values.
        let mut img = RgbImage::from_fn(120, 100, |x, _| {
            Rgb(if x < 60 { [250, 210, 0] } else { [100, 84, 0] })
        });
        noisy(&mut img, 6);
        let found = colours(&img, None);
        assert_eq!(names(&found), ["yellow"], "{found:?}");
        assert!(
            found[0].lab[0] > 75.0,
            "reported by its lit part: {found:?}"
        );
        // The shadow alone is brown: it is the merge that makes the whole yellow.
        let shadow = colours(&RgbImage::from_pixel(20, 20, Rgb([100, 84, 0])), None);
        assert_eq!(names(&shadow), ["brown"]);
    }

    #[test]
    fn black_and_white_stay_two_colours() {
        let img = RgbImage::from_fn(100, 100, |x, _| {
            Rgb(if (x / 10) % 2 == 0 {
                [15, 15, 15]
            } else {
                [240, 240, 240]
            })
        });
        let found = colours(&img, None);
        let mut found = names(&found);
        found.sort();
        assert_eq!(found, ["black", "white"]);
    }

    #[test]
    fn dark_and_glare_pixels_count_less_unless_they_are_the_object() {
        // A blue object with a band of near-black shadow counts that band about half as
        // much as a band of dark red.
        let banded = |band: [u8; 3]| {
            let img = RgbImage::from_fn(100, 100, |_, y| {
                Rgb(if y < 60 { [30, 80, 200] } else { band })
            });
            colours(&img, None)
        };
        let (murky, red) = (banded([12, 12, 14]), banded([120, 20, 20]));
        assert_eq!(names(&murky), ["blue", "black"]);
        assert_eq!(names(&red), ["blue", "red"]);
        let ratio = murky[1].share / red[1].share;
        assert!((0.4..0.7).contains(&ratio), "{murky:?} {red:?}");
        // A black object with a blue stripe is black.
        let img = RgbImage::from_fn(100, 100, |_, y| {
            Rgb(if (45..55).contains(&y) {
                [30, 80, 200]
            } else {
                [12, 12, 14]
            })
        });
        assert_eq!(colours(&img, None)[0].name, "black");
    }

    #[test]
    fn white_lettering_is_reported_next_to_its_sign() {
        // Near-white strokes are a fifth of the centre: discounted as possible glare, but
        // not out of the answer.
        let img = RgbImage::from_fn(200, 100, |x, y| {
            let stroke = (40..160).contains(&x) && (35..65).contains(&y) && (x / 6) % 2 == 0;
            Rgb(if stroke {
                [250, 250, 250]
            } else {
                [20, 90, 170]
            })
        });
        assert_eq!(names(&colours(&img, None)), ["blue", "white"]);
    }

    #[test]
    fn shades_with_one_name_are_pooled_but_grays_only_when_alike() {
        let c = |rgb: u32, weight: f32| Cluster {
            lab: srgb_to_lab(hex(rgb)),
            weight,
        };
        // Crimson and a brick red are both red: together they outweigh the green.
        let pooled = merge_same_name(vec![c(0x008000, 0.4), c(0xDC143C, 0.3), c(0xC83C28, 0.3)]);
        let got: Vec<_> = pooled.iter().map(|(c, n, d)| (*n, *d, c.weight)).collect();
        assert_eq!(got[0].0, "red");
        assert!((got[0].2 - 0.6).abs() < 1e-6);
        assert_eq!(got[1].0, "green");
        // Two grays of different CSS names stay apart; two alike are pooled.
        let grays = merge_same_name(vec![c(0x4A4D51, 0.3), c(0x878D8B, 0.3), c(0x4B4E52, 0.2)]);
        assert_eq!(grays.len(), 2);
        assert!((grays[0].0.weight - 0.5).abs() < 1e-6);
    }

    #[test]
    fn output_is_deterministic() {
        let mut img = RgbImage::from_fn(300, 200, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
        });
        noisy(&mut img, 20);
        let bbox = Some(BBox::new(20.5, 10.2, 280.9, 190.0));
        let a = colours(&img, bbox);
        let b = colours(&img, bbox);
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn sampling_stays_within_budget() {
        let img = RgbImage::new(20_000, 700);
        for (w, h) in [(1000, 700), (1000, 1), (1, 700), (7, 3), (20_000, 1)] {
            let region = Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            };
            let opts = ColourOptions {
                max_pixels: 5000,
                ..ColourOptions::default()
            };
            let inside = sample_region(&img, region, &opts)
                .iter()
                .filter(|s| s.inside)
                .count() as u32;
            assert!(
                inside >= 1 && inside <= 5000.min(w * h),
                "{w}x{h}: {inside}"
            );
        }
    }

    #[test]
    fn bad_boxes_and_options_are_errors() {
        let img = patch([0, 0, 255]);
        let opts = ColourOptions::default();
        let run = |b: BBox| dominant_colours(&img, Some(b), &opts);
        assert!(matches!(
            run(BBox::new(10.0, 10.0, 10.0, 20.0)),
            Err(ColourError::DegenerateBox { .. })
        ));
        assert!(matches!(
            run(BBox::new(10.0, f32::NAN, 20.0, 20.0)),
            Err(ColourError::DegenerateBox { .. })
        ));
        assert!(matches!(
            run(BBox::new(50.0, 0.0, 60.0, 10.0)),
            Err(ColourError::OutsideImage { .. })
        ));
        assert!(matches!(
            dominant_colours(&RgbImage::new(0, 5), None, &opts),
            Err(ColourError::EmptyImage { .. })
        ));
        let bad = ColourOptions {
            min_share: f32::NAN,
            ..ColourOptions::default()
        };
        assert!(matches!(
            dominant_colours(&img, None, &bad),
            Err(ColourError::Options(_))
        ));
        // A sliver of a box still names the pixel it lies on; a box past the edge is clipped.
        assert_eq!(
            run(BBox::new(3.2, 4.4, 3.3, 4.5)).expect("sliver")[0].name,
            "blue"
        );
        assert_eq!(
            run(BBox::new(-5.0, -5.0, 500.0, 9.0)).expect("clip")[0].name,
            "blue"
        );
    }

    #[test]
    fn options_deserialise_with_defaults() {
        let o: ColourOptions = toml::from_str("max_colours = 5").expect("options");
        assert_eq!(o.max_colours, 5);
        assert_eq!(o.border, ColourOptions::default().border);
        assert!(toml::from_str::<ColourOptions>("colours = 5").is_err());
    }
}
