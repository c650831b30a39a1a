//! Colour words narrow the answer to text of those colours.
//!
//! "What brand name is written in white on the blue panel?", "Which company's name is on the
//! orange sign?": a photo holds text everywhere, and the question says which by colour. A
//! list of lines does not carry colour, and a text controller cannot see it, so the loop
//! measures it: each text region's colours (the ink and the plate it is printed on, from
//! the pixels of its box and a margin around it) are named with the colour agent's basic
//! terms ([`crate::vision::colour`]), and the answer is narrowed to the regions that show
//! the most of the question's colour words. A question no region matches, or one that asks
//! *for* a colour ("what colour is the sign?"), is left alone, and so is a colour word that
//! describes an object the detector found ("that black mug": the mug is black, its text
//! need not be).
//!
//! Measuring is pixel statistics, not a model, so it runs inline; it is on when a colour
//! agent is loaded (the same measurement names the colours that agent reports).

use std::collections::BTreeSet;

use super::appearance::asks_about_colour;
use super::zoom::inside;
use super::Session;
use crate::agents::{Capability, FindingKind};
use crate::trace::TraceEvent;
use crate::vision::colour::{dominant_colours, ColourOptions};
use crate::vision::BBox;

/// A colour of the box itself counts when it holds this share of its pixels (thin ink on a
/// plate holds 10-35%).
const INK_SHARE: f32 = 0.1;
/// The box with a margin of this many line heights on each side shows the plate the text is
/// printed on ...
const PLATE_MARGIN: f32 = 0.3;
/// ... whose colour counts when it holds this share of that larger box.
const PLATE_SHARE: f32 = 0.25;

/// The basic colour terms ([`crate::vision::colour::basic_colour_name`]) a question's words
/// name, in order, once each; none when it asks for a colour.
pub(super) fn colour_words(question: &str) -> Vec<&'static str> {
    if asks_about_colour(question) {
        return Vec::new();
    }
    let mut out: Vec<&'static str> = Vec::new();
    for w in super::objects::words(question) {
        let basic = match w.as_str() {
            "white" => "white",
            "black" => "black",
            "gray" | "grey" | "silver" => "gray",
            "red" => "red",
            "orange" => "orange",
            "yellow" | "gold" | "golden" => "yellow",
            "green" => "green",
            "blue" | "navy" => "blue",
            "purple" | "violet" => "purple",
            "pink" => "pink",
            "brown" => "brown",
            _ => continue,
        };
        if !out.contains(&basic) {
            out.push(basic);
        }
    }
    out
}

/// The basic colour names a text box shows: its own colours holding at least
/// [`INK_SHARE`], and those of the box with a margin holding at least [`PLATE_SHARE`].
pub(super) fn text_colours(img: &image::RgbImage, b: &BBox) -> BTreeSet<String> {
    let opts = ColourOptions {
        max_colours: 4,
        min_share: 0.05,
        // A text box is small and plain: a few thousand samples name its colours.
        max_pixels: 6000,
        // The whole box is the subject: the plate around the ink is what "the blue panel"
        // names, so nothing is discounted as background.
        border: 0.0,
        ..ColourOptions::default()
    };
    let m = PLATE_MARGIN * b.height().min(b.width());
    let plate = BBox::new(b.x1 - m, b.y1 - m, b.x2 + m, b.y2 + m);
    let mut names = BTreeSet::new();
    for (bbox, share) in [(*b, INK_SHARE), (plate, PLATE_SHARE)] {
        // A degenerate box has no colours; that only means it matches nothing.
        if let Ok(colours) = dominant_colours(img, Some(bbox), &opts) {
            names.extend(
                colours
                    .into_iter()
                    .filter(|c| c.share >= share)
                    .map(|c| c.name),
            );
        }
    }
    names
}

impl Session<'_> {
    /// Whether a colour agent is loaded: colours are measured only then.
    pub(super) fn has_colour_agent(&self) -> bool {
        self.orch.tools.has_capability(Capability::Colour)
    }

    /// The question's colour words that describe text: not one that describes an object the
    /// detector found for the question ("that black mug": the mug is black, not its text).
    fn text_colour_words(&self, question: &str) -> Vec<&'static str> {
        let wanted = colour_words(question);
        let detector = self.orch.tools.with_capability(Capability::Objects);
        let Some(detector) = detector.filter(|_| !self.object_focus.is_empty()) else {
            return wanted;
        };
        let words = super::objects::words(question);
        let of_object: Vec<&'static str> = words
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                words[i + 1..(i + 3).min(words.len())]
                    .iter()
                    .any(|n| detector.knows(n) == Some(true))
            })
            .flat_map(|(_, w)| colour_words(w))
            .collect();
        wanted
            .into_iter()
            .filter(|w| !of_object.contains(w))
            .collect()
    }

    /// Sets the colour focus for `question` (see the module docs): the standing text
    /// regions that show the most of its colour words, or none. A change is traced.
    pub(super) fn focus_on_colours(&mut self, step: usize, question: &str, focus: Option<BBox>) {
        let wanted = self.text_colour_words(question);
        if wanted.is_empty() || !self.has_colour_agent() {
            self.colour_focus = None;
            return;
        }
        let _span = tracing::info_span!("colour_focus", step, words = ?wanted).entered();
        // Only the text still in view: inside the question's region, and on the objects it
        // names when those narrow the answer.
        let on_objects = self.object_narrowing(focus);
        let in_view = |b: &BBox| {
            focus.is_none_or(|f| inside(b, &f))
                && (!on_objects || self.object_focus.iter().any(|o| inside(b, o)))
        };
        let mut scored: Vec<(String, usize, String)> = Vec::new();
        for r in self.evidence.regions() {
            if r.kind != FindingKind::Text || !r.stands() || !in_view(&r.bbox) {
                continue;
            }
            let names = match self.region_colours.get(&r.id) {
                Some(n) => n.clone(),
                None => {
                    let n = text_colours(self.image.rgb(), &r.bbox);
                    self.region_colours.insert(r.id.clone(), n.clone());
                    n
                }
            };
            let hits = wanted.iter().filter(|w| names.contains(**w)).count();
            let shown = names.iter().cloned().collect::<Vec<_>>().join(", ");
            scored.push((r.id.clone(), hits, shown));
        }
        let best = scored.iter().map(|(_, h, _)| *h).max().unwrap_or(0);
        if best == 0 {
            self.colour_focus = None;
            return;
        }
        let kept: Vec<(String, String)> = scored
            .into_iter()
            .filter(|(_, h, _)| *h == best)
            .map(|(id, _, shown)| (id, shown))
            .collect();
        let ids: Vec<String> = kept.iter().map(|(id, _)| id.clone()).collect();
        if self.colour_focus.as_ref() == Some(&ids) {
            return;
        }
        let why = format!(
            "colour words {}: {}",
            wanted.join(", "),
            kept.iter()
                .map(|(id, shown)| format!("{id} ({shown})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.trace.record(TraceEvent::Narrow {
            step,
            why,
            kept: ids.clone(),
        });
        self.colour_focus = Some(ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_words_are_basic_terms_once_and_not_when_asked_for() {
        assert_eq!(
            colour_words("What is written in white on the blue panel under the sign?"),
            vec!["white", "blue"]
        );
        assert_eq!(
            colour_words("the grey car next to the silver van"),
            vec!["gray"]
        );
        assert!(colour_words("What colour is the blue sign?").is_empty());
        assert!(colour_words("What does the sign say?").is_empty());
    }

    #[test]
    fn white_on_blue_is_told_from_white_on_orange() {
        let mut img = image::RgbImage::from_pixel(400, 200, image::Rgb([200, 180, 120]));
        let paint = |img: &mut image::RgbImage, x0: u32, plate: [u8; 3]| {
            for y in 40..100 {
                for x in x0..x0 + 150 {
                    // White strokes on a plate: every fourth column is ink.
                    let ink = y > 55 && y < 85 && x % 4 == 0;
                    img.put_pixel(x, y, image::Rgb(if ink { [250, 250, 250] } else { plate }));
                }
            }
        };
        paint(&mut img, 20, [30, 60, 170]);
        paint(&mut img, 220, [235, 110, 30]);
        let blue = text_colours(&img, &BBox::new(30.0, 50.0, 160.0, 90.0));
        let orange = text_colours(&img, &BBox::new(230.0, 50.0, 360.0, 90.0));
        assert!(blue.contains("blue") && blue.contains("white"), "{blue:?}");
        assert!(
            orange.contains("orange") && orange.contains("white"),
            "{orange:?}"
        );
        assert!(!orange.contains("blue") && !blue.contains("orange"));
    }
}
