//! A tiny built-in bitmap font for region labels.
//!
//! Set-of-Mark images need region ids drawn into the pixels the model sees, and `p2g trace
//! draw` has to draw them again identically later; a 5x7 pixel font typed in as bit rows
//! needs no font file, no rasteriser and renders the same on every machine. The glyphs are
//! drawn in the style of the classic public-domain 5x7 terminal fonts, with an eighth row
//! for the descenders of `g j p q y` and `,`.
//!
//! Every glyph sits in a cell 6 font pixels wide (5 plus 1 of spacing) and 8 high; a label is
//! the text on a filled rectangle with 1 font pixel of padding, so a label of `n` characters
//! is `6n + 1` by 10 font pixels.

use image::{Rgb, RgbImage};

/// Glyph width in font pixels; bit 4 of a row is the leftmost pixel.
const GLYPH_W: u32 = 5;
/// Glyph rows: 7 above the baseline and 1 for descenders.
const GLYPH_H: u32 = 8;
/// Horizontal advance per character: the glyph plus 1 font pixel of spacing.
const ADVANCE: u32 = GLYPH_W + 1;
/// Padding around the text, in font pixels, so labels stand out on busy photos.
const PAD: u32 = 1;
/// Scales above this would only ever draw one glyph bigger than any image p2g sends.
const MAX_SCALE: u32 = 1024;

/// Drawn for characters the font lacks, so an unexpected id still shows its length.
const UNKNOWN: [u8; 8] = [
    0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0b00000,
];

#[rustfmt::skip]
const GLYPHS: [(char, [u8; 8]); 79] = [
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    (';', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000]),
    ('[', [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0b00000]),
    (']', [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000]),
    ('!', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0b00000]),
];

/// The bit rows of `c`, or `None` where the font has no glyph for it.
fn glyph(c: char) -> Option<&'static [u8; 8]> {
    GLYPHS.iter().find(|(g, _)| *g == c).map(|(_, rows)| rows)
}

/// Size in pixels of `text` drawn at `scale` (each font pixel a scale x scale square),
/// including 1-font-pixel spacing.
///
/// This is the whole label [`draw_label`] paints — background padding included — so callers
/// can reserve room for a label with this one number. Empty text is `(0, 0)`; a scale of 0
/// counts as 1.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let chars = text.chars().count() as u64;
    if chars == 0 {
        return (0, 0);
    }
    let scale = u64::from(scale.clamp(1, MAX_SCALE));
    let width = (chars * u64::from(ADVANCE) + u64::from(PAD)) * scale;
    let height = u64::from(GLYPH_H + 2 * PAD) * scale;
    (saturate(width), saturate(height))
}

/// Draws `text` with its top-left at (x, y) on a filled background rectangle (padding 1 font
/// pixel) — clipped at the image edges, never panics.
///
/// (x, y) is the top-left of the background rectangle, which is [`text_size`] big.
pub fn draw_label(
    img: &mut RgbImage,
    text: &str,
    x: i64,
    y: i64,
    scale: u32,
    fg: Rgb<u8>,
    bg: Rgb<u8>,
) {
    let (w, h) = text_size(text, scale);
    if w == 0 {
        return;
    }
    fill_rect(img, x, y, i64::from(w), i64::from(h), bg);
    let s = i64::from(scale.clamp(1, MAX_SCALE));
    let right_edge = i64::from(img.width());
    for (i, c) in text.chars().enumerate() {
        let offset = (i as i64).saturating_mul(i64::from(ADVANCE) * s);
        let gx = x.saturating_add(offset.saturating_add(s));
        if gx >= right_edge {
            // Everything further right is clipped; long ids on small images stop here.
            break;
        }
        let rows = glyph(c).unwrap_or(&UNKNOWN);
        for (r, bits) in rows.iter().enumerate() {
            let py = y.saturating_add((r as i64 + i64::from(PAD)) * s);
            for b in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - b)) != 0 {
                    let px = gx.saturating_add(i64::from(b) * s);
                    fill_rect(img, px, py, s, s, fg);
                }
            }
        }
    }
}

/// Fills the rectangle at (x, y) of size `w` x `h`, clipped to the image; shared with the
/// mosaic's outlines so every drawing primitive clips the same way.
pub(crate) fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, colour: Rgb<u8>) {
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    let (x0, y0) = (x.clamp(0, iw), y.clamp(0, ih));
    let (x1, y1) = (
        x.saturating_add(w).clamp(0, iw),
        y.saturating_add(h).clamp(0, ih),
    );
    for py in y0..y1 {
        for px in x0..x1 {
            img.put_pixel(px as u32, py as u32, colour);
        }
    }
}

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.,:#()/ ";
    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
    const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

    #[test]
    fn every_required_character_has_its_own_glyph() {
        for c in REQUIRED.chars() {
            assert!(glyph(c).is_some(), "no glyph for {c:?}");
        }
        // A typo that copies one glyph over another would make two characters unreadable.
        for (i, (a, rows_a)) in GLYPHS.iter().enumerate() {
            assert!(
                rows_a.iter().all(|r| *r < 1 << GLYPH_W),
                "{a:?} is over 5 wide"
            );
            for (b, rows_b) in &GLYPHS[i + 1..] {
                assert_ne!(a, b, "{a:?} defined twice");
                assert_ne!(rows_a, rows_b, "{a:?} and {b:?} look the same");
            }
        }
        assert!(glyph('é').is_none());
    }

    #[test]
    fn text_size_counts_padding_and_spacing() {
        assert_eq!(text_size("", 3), (0, 0));
        assert_eq!(text_size("r", 1), (7, 10));
        assert_eq!(text_size("r12", 1), (19, 10));
        assert_eq!(text_size("r12", 3), (57, 30));
        assert_eq!(text_size("r12", 0), text_size("r12", 1));
        // Characters, not bytes.
        assert_eq!(text_size("éé", 1), text_size("ab", 1));
        let long = "x".repeat(1_000_000);
        assert_eq!(text_size(&long, u32::MAX).0, u32::MAX);
    }

    #[test]
    fn draw_label_paints_background_and_glyph_pixels() {
        let mut img = RgbImage::from_pixel(40, 30, Rgb([9, 9, 9]));
        draw_label(&mut img, "I1", 2, 3, 2, WHITE, BLACK);
        let (w, h) = text_size("I1", 2);
        let lit = |c| img.pixels().filter(|p| **p == c).count();
        let bits: u32 = [glyph('I'), glyph('1')]
            .iter()
            .flat_map(|g| g.unwrap().iter())
            .map(|r| r.count_ones())
            .sum();
        assert_eq!(lit(WHITE) as u32, bits * 4);
        assert_eq!(lit(WHITE) + lit(BLACK), (w * h) as usize);
        // The top row of 'I' (.###.) starts one glyph pixel in, after the padding.
        assert_eq!(*img.get_pixel(2 + 2 + 2, 3 + 2), WHITE);
        assert_eq!(*img.get_pixel(2 + 2, 3 + 2), BLACK);
        assert_eq!(*img.get_pixel(1, 3), Rgb([9, 9, 9]));
    }

    #[test]
    fn unknown_characters_draw_as_a_box() {
        let mut a = RgbImage::new(20, 20);
        let mut b = RgbImage::new(20, 20);
        draw_label(&mut a, "é", 0, 0, 1, WHITE, BLACK);
        draw_label(&mut b, "\u{1F600}", 0, 0, 1, WHITE, BLACK);
        assert_eq!(a, b);
        assert_eq!(*a.get_pixel(1, 1), WHITE);
    }

    #[test]
    fn draw_label_clips_and_never_panics() {
        let mut img = RgbImage::new(16, 16);
        for (x, y) in [
            (-5, -5),
            (10, 12),
            (i64::MIN, i64::MIN),
            (i64::MAX, i64::MAX),
            (-100, 3),
        ] {
            for scale in [0, 1, 3, 1000, u32::MAX] {
                draw_label(&mut img, "r12 #(a/b)", x, y, scale, WHITE, BLACK);
            }
        }
        let mut empty = RgbImage::new(0, 0);
        draw_label(&mut empty, "r1", 0, 0, 2, WHITE, BLACK);
        draw_label(&mut img, "", 0, 0, 2, WHITE, WHITE);
        let mut img = RgbImage::new(8, 8);
        draw_label(&mut img, "x", -3, -3, 2, WHITE, BLACK);
        assert!(img.pixels().any(|p| *p == WHITE));
    }
}
