//! Zoom, steep lines and leads on real photos: the OCR agent goes back to the image for what
//! its first reading missed.

mod common;

use image::{Rgb, RgbImage};
use p2g::agents::ocr::{OcrArgs, OcrOutput, Zoom};
use p2g::agents::{Agent, AgentError, DynAgent, LeadKind};
use p2g::vision::{BBox, Image, LoadOptions};

fn hires(name: &str) -> Image {
    let path = common::eval_dir("hires").join(name);
    Image::open(&path, &LoadOptions::default()).expect("photo decodes")
}

fn read(image: &Image, region: Option<BBox>, zoom: Option<Zoom>) -> OcrOutput {
    common::agent()
        .read(image, &OcrArgs { region, zoom })
        .expect("OCR runs")
}

fn inside(b: &BBox, region: &BBox) -> bool {
    b.x1 >= region.x1 - 1.0
        && b.y1 >= region.y1 - 1.0
        && b.x2 <= region.x2 + 1.0
        && b.y2 <= region.y2 + 1.0
}

/// The flag's word, about 25 pixels thick and slanted, running top to bottom.
const FLAG_REGION: [f32; 4] = [1850.0, 1250.0, 2250.0, 1650.0];
const FLAG_TEXT: [f32; 4] = [1950.0, 1360.0, 2010.0, 1520.0];

#[test]
fn auto_zoom_reads_the_whole_word_on_the_flag() {
    let image = hires("flag.JPG");
    let region = BBox::from(FLAG_REGION);
    let plain = read(&image, Some(region), None);
    let plain_text = common::joined_upper(&plain.lines);
    assert!(
        !plain_text.contains("WARRIORS"),
        "1x already reads it: {plain_text}"
    );
    let out = read(&image, Some(region), Some(Zoom::Auto));
    let zoom = out.zoom.expect("the zoom is reported");
    assert_eq!(zoom.region, region);
    assert!(
        zoom.scale > 2.0 && zoom.scale <= 4.0,
        "auto picked {}",
        zoom.scale
    );
    let line = out
        .lines
        .iter()
        .find(|l| l.text.to_uppercase().contains("WARRIORS"))
        .unwrap_or_else(|| panic!("no WARRIORS in {:?}", common::joined_upper(&out.lines)));
    // In full-image pixels, on the flag.
    assert!(inside(&line.bbox, &region), "{:?}", line.bbox);
    assert!(line.bbox.intersection(&BBox::from(FLAG_TEXT)) > 0.5 * line.bbox.area());
    assert_eq!((out.width, out.height), (image.width(), image.height()));
}

#[test]
fn zoom_reads_spalding_where_1x_does_not() {
    let image = hires("nba.png");
    let region = BBox::new(840.0, 350.0, 960.0, 430.0);
    let plain = common::joined_upper(&read(&image, Some(region), None).lines);
    assert!(!plain.contains("SPALDING"), "1x already reads it: {plain}");
    let out = read(&image, Some(region), Some(Zoom::Auto));
    let text = common::joined_upper(&out.lines);
    assert!(text.contains("SPALDING"), "zoomed reading: {text}");
    assert!(out.lines.iter().all(|l| inside(&l.bbox, &region)));
}

#[test]
fn the_flag_photo_leaves_a_lead_on_the_flag_and_following_it_reads_the_word() {
    let image = hires("flag.JPG");
    let agent = common::agent();
    let whole = read(&image, None, None);
    assert!(!common::joined_upper(&whole.lines).contains("WARRIORS"));
    let leads = agent.leads(&whole);
    assert_eq!(leads, whole.leads);
    assert!(leads.len() <= 2 * agent.options().max_leads);
    let [fx, fy] = BBox::from(FLAG_TEXT).center();
    let lead = leads
        .iter()
        .find(|l| {
            let b = l.bbox;
            l.kind == LeadKind::UnreadText && b.x1 <= fx && fx <= b.x2 && b.y1 <= fy && fy <= b.y2
        })
        .unwrap_or_else(|| panic!("no unread-text lead on the flag: {leads:?}"));
    assert_eq!(lead.score, 0.0);
    let h = lead.text_height.expect("a text height");
    assert!((10.0..60.0).contains(&h), "text height {h}");
    // The orchestrator's way: a window around the lead with a few text heights of context
    // (the detector saw only part of the word), the agent's own zoom arguments for it, the
    // JSON interface.
    let pad = (0.5 * lead.bbox.width().max(lead.bbox.height())).max(3.0 * h);
    let b = BBox::new(
        lead.bbox.x1 - pad,
        lead.bbox.y1 - pad,
        lead.bbox.x2 + pad,
        lead.bbox.y2 + pad,
    );
    let args = Agent::zoom_arguments(agent, &b).expect("OCR can zoom");
    assert_eq!(
        args,
        serde_json::json!({"region": [b.x1, b.y1, b.x2, b.y2], "zoom": "auto"})
    );
    let reply = common::rt()
        .block_on(DynAgent::call(agent, &image, args))
        .expect("zoomed read");
    let texts: Vec<String> = reply
        .findings
        .iter()
        .map(|f| f.text.to_uppercase())
        .collect();
    assert!(texts.iter().any(|t| t.contains("WARRIORS")), "{texts:?}");
    assert!(reply.output.get("zoom").is_some());
}

#[test]
fn bad_zoom_arguments_are_argument_errors() {
    let image = Image::from_rgb(RgbImage::from_pixel(64, 64, Rgb([255, 255, 255])));
    let agent = common::agent();
    let rt = common::rt();
    for args in [
        serde_json::json!({"zoom": "big"}),
        serde_json::json!({"zoom": 0.5}),
        serde_json::json!({"zoom": 0}),
        serde_json::json!({"zoom": -2}),
        serde_json::json!({"zoom": 40}),
        serde_json::json!({"zoom": "NaN"}),
        serde_json::json!({"zoom": [2]}),
        serde_json::json!({"zoom": 2, "sharpen": true}),
    ] {
        let err = rt
            .block_on(DynAgent::call(agent, &image, args.clone()))
            .expect_err("refused");
        assert!(matches!(err, AgentError::Arguments { .. }), "{args}: {err}");
        eprintln!("{args}: {err}");
    }
    let err = agent
        .read(
            &image,
            &OcrArgs {
                region: None,
                zoom: Some(Zoom::Scale(f32::NAN)),
            },
        )
        .expect_err("NaN refused");
    assert!(err.to_string().contains("zoom"), "{err}");
    // Within range is fine, also on a blank image.
    let ok = agent
        .read(
            &image,
            &OcrArgs {
                region: None,
                zoom: Some(Zoom::Scale(4.0)),
            },
        )
        .unwrap();
    assert!(ok.lines.is_empty());
    assert_eq!(ok.zoom.map(|z| z.scale), Some(4.0));
}

/// A white 900x500 page with two pieces of the receipt fixture at known places: its
/// "KF MODELLING CLAY KIDDY FISH" line at (400, 220), its "EXCHANGEABLE" at (150, 380).
fn page() -> Image {
    let receipt = Image::open(&common::fixture("receipt.jpg"), &LoadOptions::default()).unwrap();
    let mut canvas = RgbImage::from_pixel(900, 500, Rgb([255, 255, 255]));
    for ([x, y, w, h], at) in [
        ([150, 560, 255, 31], (400, 220)),
        ([179, 853, 143, 36], (150, 380)),
    ] {
        let piece = image::imageops::crop_imm(receipt.rgb(), x, y, w, h).to_image();
        image::imageops::overlay(&mut canvas, &piece, at.0, at.1);
    }
    Image::from_rgb(canvas)
}

#[test]
fn a_zoomed_reading_is_mapped_back_to_original_pixels() {
    let image = page();
    let plain = read(&image, None, None);
    let region = BBox::new(100.0, 180.0, 700.0, 450.0);
    for zoom in [Zoom::Scale(2.0), Zoom::Scale(3.5)] {
        let out = read(&image, Some(region), Some(zoom));
        assert_eq!(out.zoom.map(|z| z.region), Some(region));
        let text = common::joined_upper(&out.lines);
        assert!(
            text.contains("CLAY KIDDY FISH") && text.contains("EXCHANGEABLE"),
            "{text}"
        );
        for l in &out.lines {
            assert!(inside(&l.bbox, &region), "{:?}", l.bbox);
            // Where the same text was read at 1x over the whole page, it sits in the same
            // place: boxes differ by a few pixels of DB's unclip, a mapping error by tens.
            let [cx, cy] = l.bbox.center();
            if let Some(p) = plain.lines.iter().find(|p| p.text == l.text) {
                let [px, py] = p.bbox.center();
                assert!(
                    (px - cx).abs() <= 4.0 && (py - cy).abs() <= 4.0 && p.bbox.iou(&l.bbox) > 0.7,
                    "{:?} at {:?}, at 1x {:?}",
                    l.text,
                    l.bbox,
                    p.bbox
                );
            }
        }
        // Placed where they were pasted.
        let exch = out
            .lines
            .iter()
            .find(|l| l.text.contains("EXCHANGEABLE"))
            .unwrap();
        let pasted = BBox::new(150.0, 380.0, 293.0, 416.0);
        assert!(inside(&exch.bbox, &pasted), "{:?}", exch.bbox);
        assert!(exch.bbox.area() > 0.3 * pasted.area(), "{:?}", exch.bbox);
    }
    // The whole page magnified: the zoom covers it all.
    let whole = read(&image, None, Some(Zoom::Scale(2.0)));
    assert_eq!(
        whole.zoom.map(|z| z.region),
        Some(BBox::new(0.0, 0.0, 900.0, 500.0))
    );
    assert!(common::word_f1(&plain.lines, &whole.lines) > 0.8);
}

/// `img` rotated by `degrees` counter-clockwise about its centre onto a white square canvas
/// large enough to hold it (bilinear).
fn rotated(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let side = (w.hypot(h) + 40.0) as u32;
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy, half) = (w / 2.0, h / 2.0, side as f32 / 2.0);
    RgbImage::from_fn(side, side, |x, y| {
        let (dx, dy) = (x as f32 - half, y as f32 - half);
        // Inverse rotation (y points down, so counter-clockwise on screen is -degrees).
        let sx = c * dx - s * dy + cx;
        let sy = s * dx + c * dy + cy;
        if sx < 0.0 || sy < 0.0 || sx > w - 1.0 || sy > h - 1.0 {
            return Rgb([255, 255, 255]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = (
            (x0 + 1).min(img.width() - 1),
            (y0 + 1).min(img.height() - 1),
        );
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let mut out = [0u8; 3];
        for (ch, o) in out.iter_mut().enumerate() {
            let p = |x: u32, y: u32| f32::from(img.get_pixel(x, y)[ch]);
            let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
            let bot = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
            *o = (top * (1.0 - fy) + bot * fy).round() as u8;
        }
        Rgb(out)
    })
}

#[test]
fn slanted_and_vertical_lines_come_out_upright() {
    let receipt = Image::open(&common::fixture("receipt.jpg"), &LoadOptions::default()).unwrap();
    let line = image::imageops::crop_imm(receipt.rgb(), 150, 560, 255, 31).to_image();
    let word = image::imageops::crop_imm(receipt.rgb(), 179, 853, 143, 36).to_image();
    // Both ways up a vertical line: text running top to bottom and bottom to top.
    let cases = [
        (&line, 20.0, "CLAY KIDDY FISH"),
        (&line, 35.0, "CLAY KIDDY FISH"),
        (&line, 50.0, "CLAY KIDDY FISH"),
        (&line, 70.0, "CLAY KIDDY FISH"),
        (&line, -35.0, "CLAY KIDDY FISH"),
        (&line, -70.0, "CLAY KIDDY FISH"),
        (&line, 90.0, "CLAY KIDDY FISH"),
        (&line, -90.0, "CLAY KIDDY FISH"),
        (&word, 90.0, "EXCHANGEABLE"),
        (&word, -90.0, "EXCHANGEABLE"),
    ];
    let mut wrong = Vec::new();
    for (img, degrees, want) in cases {
        let image = Image::from_rgb(rotated(img, degrees));
        let text = common::joined_upper(&read(&image, None, None).lines);
        eprintln!("{degrees:>5}°: {text:?}");
        if !text.contains(want) {
            wrong.push(format!("{degrees}°: {text:?}"));
        }
    }
    assert!(wrong.is_empty(), "not read upright: {wrong:?}");
}

#[test]
fn the_cli_reports_the_zoom_only_when_asked_and_refuses_bad_factors() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_p2g"))
            .arg("ocr")
            .args(args)
            .arg(common::fixture("receipt.jpg"))
            .output()
            .expect("p2g runs")
    };
    let out = run(&["--json", "--region", "150,560,405,591", "--zoom", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["elapsed_ms", "height", "lines", "width", "zoom"]);
    assert_eq!(
        v["zoom"],
        serde_json::json!({"region": [150.0, 560.0, 405.0, 591.0], "scale": 2.0})
    );
    let with_leads = run(&["--json", "--leads"]);
    let v: serde_json::Value = serde_json::from_slice(&with_leads.stdout).unwrap();
    assert!(v["leads"].is_array() && v.get("zoom").is_none());
    // Out of range: the agent's one-line argument error. Not a number: clap's usage error.
    for (bad, one_line) in [("9", true), ("0.5", true), ("NaN", true), ("big", false)] {
        let out = run(&["--zoom", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--zoom {bad} accepted");
        assert!(err.contains("zoom"), "{err}");
        if one_line {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains("out of range"), "{err}");
        }
    }
}
