//! Accuracy of the real PP-OCRv5 pipeline on the 40 SROIE receipts in ../shared/eval.
//!
//! Thresholds are pinned a little below what was measured when they were set (see
//! BENCHMARKS.md), so a regression in any stage (resize, DB, orientation, CTC, spaces) fails.

mod common;

use p2g::agents::ocr::OcrArgs;
use p2g::vision::{Image, LoadOptions};

const MIN_WORD_F1: f64 = 0.80;
const MAX_CER: f64 = 0.10;

#[test]
fn sroie_receipts_are_read_accurately_and_upright() {
    let dir = common::eval_dir("sroie-dev");
    let agent = common::agent();
    let mut total = common::Score::default();
    let mut flipped = Vec::new();
    let mut n = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir.join("img"))
        .expect("img folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for path in names {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let image = Image::open(&path, &LoadOptions::default()).expect("receipt decodes");
        let out = agent.read(&image, &OcrArgs::default()).expect("OCR runs");
        let gt = common::read_gt(&dir.join("box").join(format!("{stem}.csv")));
        let s = common::score(&gt, &out.lines);
        eprintln!("{stem}: word F1 {:.3} CER {:.3}", s.f1(), s.cer());
        total.add(s);
        // SROIE has no upside-down lines: any flip is the orientation classifier's error.
        for l in out.lines.iter().filter(|l| l.upside_down) {
            flipped.push(format!("{stem}: {:?}", l.text));
        }
        n += 1;
    }
    assert_eq!(n, 40, "expected the 40 sroie-dev receipts");
    eprintln!(
        "overall: word F1 {:.4} CER {:.4} ({total:?})",
        total.f1(),
        total.cer()
    );
    assert!(
        flipped.is_empty(),
        "upright lines read as upside down: {flipped:?}"
    );
    assert!(
        total.f1() >= MIN_WORD_F1,
        "word F1 {:.4} < {MIN_WORD_F1}",
        total.f1()
    );
    assert!(total.cer() <= MAX_CER, "CER {:.4} > {MAX_CER}", total.cer());
}

#[test]
fn an_upside_down_receipt_is_read_upright() {
    let dir = common::eval_dir("sroie-dev");
    let agent = common::agent();
    let path = dir.join("img").join("001.jpg");
    let upright = Image::open(&path, &LoadOptions::default()).unwrap();
    let turned = Image::from_rgb(image::imageops::rotate180(upright.rgb()));
    let a = agent.read(&upright, &OcrArgs::default()).unwrap();
    let b = agent.read(&turned, &OcrArgs::default()).unwrap();
    let flipped = b.lines.iter().filter(|l| l.upside_down).count();
    assert!(
        flipped * 10 >= b.lines.len() * 9,
        "only {flipped} of {} lines were turned",
        b.lines.len()
    );
    // The turned reading must contain (nearly) the same words as the upright one.
    let tokens = |s: String| {
        let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        v.sort();
        v
    };
    let (ta, tb) = (
        tokens(common::joined_upper(&a.lines)),
        tokens(common::joined_upper(&b.lines)),
    );
    let common_words = ta.iter().filter(|w| tb.binary_search(w).is_ok()).count();
    let overlap = common_words as f64 / ta.len().max(1) as f64;
    assert!(
        overlap >= 0.85,
        "turned reading shares only {overlap:.2} of the upright words"
    );
}

#[test]
fn one_upside_down_line_on_an_upright_receipt_is_read_turned() {
    // The classifier is asked only about lines that read unsurely and a sample of the
    // longest ones: a single turned line among upright ones must still be one of them.
    let dir = common::eval_dir("sroie-dev");
    let agent = common::agent();
    let path = dir.join("img").join("001.jpg");
    let upright = Image::open(&path, &LoadOptions::default()).unwrap();
    let a = agent.read(&upright, &OcrArgs::default()).unwrap();
    // A mid-length line (not among the page sample's longest), read cleanly upright.
    let mut lines: Vec<_> = a
        .lines
        .iter()
        .filter(|l| l.text.chars().filter(|c| c.is_alphanumeric()).count() >= 8)
        .filter(|l| l.bbox.width() >= 4.0 * l.bbox.height() && l.confidence >= 0.9)
        .collect();
    lines.sort_by(|x, y| x.bbox.width().total_cmp(&y.bbox.width()));
    let line = lines[lines.len() / 2];
    let b = line.bbox;
    let mut rgb = upright.rgb().clone();
    let (x, y) = (b.x1.max(0.0) as u32, b.y1.max(0.0) as u32);
    let (w, h) = (
        (b.x2.min(rgb.width() as f32) as u32).saturating_sub(x),
        (b.y2.min(rgb.height() as f32) as u32).saturating_sub(y),
    );
    let turned =
        image::imageops::rotate180(&image::imageops::crop_imm(&rgb, x, y, w, h).to_image());
    image::imageops::replace(&mut rgb, &turned, x.into(), y.into());
    let read = agent
        .read(&Image::from_rgb(rgb), &OcrArgs::default())
        .unwrap();
    let centre = |l: &p2g::agents::ocr::TextLine| {
        ((l.bbox.x1 + l.bbox.x2) / 2.0, (l.bbox.y1 + l.bbox.y2) / 2.0)
    };
    let (cx, cy) = centre(line);
    let there: Vec<_> = read
        .lines
        .iter()
        .filter(|l| {
            let (lx, ly) = centre(l);
            (lx - cx).abs() < b.width() / 2.0 && (ly - cy).abs() < b.height() / 2.0
        })
        .collect();
    // The same characters (a cut edge may lose a trailing dot): at most 2 edits apart.
    let alnum = |t: &str| -> Vec<char> { t.chars().filter(|c| c.is_alphanumeric()).collect() };
    let want = alnum(&line.text);
    assert!(
        there
            .iter()
            .any(|l| l.upside_down && edit_distance(&alnum(&l.text), &want) <= 2),
        "{:?} turned in place was read as {there:?}",
        line.text
    );
    let others = read.lines.iter().filter(|l| l.upside_down).count();
    assert!(
        others <= 1,
        "{others} lines were turned, only one was upside down"
    );
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != cb));
            diag = up;
        }
    }
    row[b.len()]
}
