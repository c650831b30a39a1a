//! Every kind of input image: layouts that must read like the plain one, and bad files that
//! must fail with a clear error (never a panic, never a silent partial reading).

mod common;

use p2g::agents::ocr::OcrArgs;
use p2g::vision::{Image, LoadOptions, VisionError};

fn read(name: &str) -> Vec<p2g::agents::ocr::TextLine> {
    let image = Image::open(&common::fixture(name), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    common::agent()
        .read(&image, &OcrArgs::default())
        .unwrap()
        .lines
}

#[test]
fn grayscale_alpha_16bit_cmyk_and_exif_rotated_inputs_read_like_plain_rgb() {
    let plain = read("header.png");
    let text = common::joined_upper(&plain);
    assert!(
        text.contains("TAMAN DAYA") && text.contains("789417-W"),
        "{text}"
    );
    for name in [
        "header_gray.png",
        "header_rgba.png",
        "header_16bit.png",
        "header_cmyk.jpg",
        "header_exif6.jpg",
    ] {
        let lines = read(name);
        let f1 = common::word_f1(&plain, &lines);
        assert!(
            f1 >= 0.8,
            "{name}: word F1 {f1:.2} against the RGB reading: {:?}",
            common::joined_upper(&lines)
        );
    }
}

#[test]
fn exif_orientation_is_applied_before_reading() {
    let img = Image::open(
        &common::fixture("header_exif6.jpg"),
        &LoadOptions::default(),
    )
    .unwrap();
    let plain = Image::open(&common::fixture("header.png"), &LoadOptions::default()).unwrap();
    assert_eq!((img.width(), img.height()), (plain.width(), plain.height()));
}

fn open_err(name: &str, opts: &LoadOptions) -> VisionError {
    Image::open(&common::fixture(name), opts).expect_err(name)
}

#[test]
fn bad_files_get_clear_errors() {
    let d = LoadOptions::default();
    assert!(matches!(
        open_err("truncated.jpg", &d),
        VisionError::Decode { .. }
    ));
    assert!(matches!(
        open_err("not_an_image.jpg", &d),
        VisionError::UnknownFormat { .. }
    ));
    assert!(matches!(
        open_err("empty.png", &d),
        VisionError::EmptyFile { .. }
    ));
    assert!(matches!(
        open_err("missing.png", &d),
        VisionError::Read { .. }
    ));
    match open_err("bomb.png", &d) {
        VisionError::TooLarge { width, height, .. } => assert_eq!((width, height), (60000, 60000)),
        e => panic!("bomb.png: {e}"),
    }
    let small = LoadOptions { max_pixels: 1000 };
    let e = open_err("receipt.jpg", &small);
    assert!(e.to_string().contains("--max-pixels"), "{e}");
}
