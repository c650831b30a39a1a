//! High resolution: native-resolution tiles find small text a single global pass misses.

mod common;

use p2g::agents::ocr::OcrArgs;
use p2g::vision::{Image, LoadOptions};

#[test]
fn tiles_find_small_text_that_the_global_pass_misses() {
    let path = common::eval_dir("hires").join("signicade.JPG");
    let image = Image::open(&path, &LoadOptions::default()).expect("photo decodes");
    assert!(image.width() > 4000, "a 4240x2700 photo");
    let tiled = common::agent().read(&image, &OcrArgs::default()).unwrap();
    let global = common::agent_with(|c| c.options.tiling = false)
        .read(&image, &OcrArgs::default())
        .unwrap();
    let (t, g) = (
        common::joined_upper(&tiled.lines),
        common::joined_upper(&global.lines),
    );
    eprintln!("tiled:\n{t}\n--\nglobal:\n{g}");
    // The "OFFICE FOR LEASE" placard is about 20 pixels tall in a 4240-pixel-wide photo.
    for word in ["LEASE", "OFFICE"] {
        assert!(t.contains(word), "tiled reading misses {word}");
        assert!(
            !g.contains(word),
            "the global pass alone already reads {word}: pick a harder case"
        );
    }
    assert!(tiled.lines.len() > global.lines.len());
    // Everything in original-image pixels.
    for l in &tiled.lines {
        assert!(l.bbox.x2 <= image.width() as f32 && l.bbox.y2 <= image.height() as f32);
    }
}

#[test]
fn a_region_is_read_in_original_coordinates() {
    let path = common::eval_dir("hires").join("signicade.JPG");
    let image = Image::open(&path, &LoadOptions::default()).unwrap();
    let full = common::agent().read(&image, &OcrArgs::default()).unwrap();
    let lease = full
        .lines
        .iter()
        .find(|l| l.text.to_uppercase().contains("LEASE"))
        .expect("LEASE line in the full reading");
    let b = lease.bbox;
    let region = p2g::vision::BBox::new(b.x1 - 150.0, b.y1 - 150.0, b.x2 + 150.0, b.y2 + 150.0);
    let zoomed = common::agent()
        .read(
            &image,
            &OcrArgs {
                region: Some(region),
                zoom: None,
            },
        )
        .unwrap();
    let found = zoomed
        .lines
        .iter()
        .find(|l| l.text.to_uppercase().contains("LEASE"))
        .expect("LEASE read inside the region");
    assert!(found.bbox.iou(&b) > 0.6, "{:?} vs {:?}", found.bbox, b);
    for l in &zoomed.lines {
        assert!(l.bbox.x1 >= region.x1 - 1.0 && l.bbox.x2 <= region.x2 + 1.0);
    }
}

#[test]
fn a_large_scan_is_read_by_the_global_pass_alone() {
    // A receipt scanned at 4x (as at 600 dpi; Lanczos-upscaled): the global pass reads it
    // whole, so no tile may be read — they cost two thirds of the time for fragments.
    let path = common::eval_dir("sroie-dev").join("img").join("028.jpg");
    let small = Image::open(&path, &LoadOptions::default()).unwrap();
    let big = Image::from_rgb(image::imageops::resize(
        small.rgb(),
        small.width() * 4,
        small.height() * 4,
        image::imageops::FilterType::Lanczos3,
    ));
    assert!(big.width().max(big.height()) > 4000, "a large scan");
    let read = |change: &dyn Fn(&mut p2g::agents::ocr::OcrConfig)| {
        let lines = common::agent_with(change)
            .read(&big, &OcrArgs::default())
            .unwrap()
            .lines;
        common::joined_upper(&lines)
    };
    let default = read(&|_| {});
    let global = read(&|c| c.options.tiling = false);
    assert_eq!(
        default, global,
        "tiles were read on a document the global pass resolves"
    );
    // The assertion can fail: with the document rule off, tiles are read and change it.
    let rule_off = read(&|c| c.options.tile_resolved_height = 0.0);
    assert_ne!(
        rule_off, global,
        "no tile was read even without the rule: pick another scan"
    );
    // And the scan reads as it does at its own size.
    let original = common::joined_upper(
        &common::agent()
            .read(&small, &OcrArgs::default())
            .unwrap()
            .lines,
    );
    let words = |s: &str| -> std::collections::BTreeSet<String> {
        s.split_whitespace().map(str::to_string).collect()
    };
    let (a, b) = (words(&default), words(&original));
    let shared = a.intersection(&b).count() as f64 / b.len().max(1) as f64;
    assert!(shared >= 0.85, "only {shared:.2} of the words read at 1x");
}
