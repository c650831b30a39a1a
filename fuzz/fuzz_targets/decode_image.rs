//! Image decoding on arbitrary bytes: never a panic, never an image past the pixel limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2g::vision::{Image, LoadOptions};

const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    let opts = LoadOptions {
        max_pixels: MAX_PIXELS,
    };
    if let Ok(img) = Image::decode(data, "fuzz", &opts) {
        let pixels = u64::from(img.width()) * u64::from(img.height());
        assert!(
            pixels > 0 && pixels <= MAX_PIXELS,
            "{}x{} decoded past the limit",
            img.width(),
            img.height()
        );
        assert_eq!(img.rgb().as_raw().len() as u64, pixels * 3);
    }
});
