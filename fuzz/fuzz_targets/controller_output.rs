//! A controller's free-form output, read every way p2g reads untrusted text: as a decision
//! (tool call or answer), as a region `x1,y1,x2,y2`, as boxes in every grounding model's
//! convention, and as an agent manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2g::agents::AgentManifest;
use p2g::answer::boxes::{BoxConvention, Frame};
use p2g::controller::parse::parse_decision;
use p2g::controller::Decision;
use p2g::vision::BBox;

const TOOLS: &[&str] = &["ocr", "detect"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;

    match parse_decision(text, "answer", TOOLS) {
        Ok(Decision::Call { agent, arguments }) => {
            assert!(TOOLS.contains(&agent.as_str()), "a call to {agent:?}");
            assert!(arguments.is_object(), "arguments {arguments}");
        }
        Ok(Decision::Answer { grounding, .. }) => {
            assert!(grounding.iter().all(|c| c.bbox.is_none()));
        }
        Ok(Decision::NotFound { .. }) => panic!("parse_decision never says not-found"),
        Err(e) => assert!(!e.is_empty()),
    }

    if let Ok(b) = BBox::parse(text) {
        assert!(b.x1.is_finite() && b.y1.is_finite() && b.x2.is_finite() && b.y2.is_finite());
        assert!(b.x2 > b.x1 && b.y2 > b.y1, "{b:?}");
    }

    let regions = [
        ("r1".to_string(), BBox::new(10.0, 10.0, 200.0, 40.0)),
        ("r2".to_string(), BBox::new(f32::NAN, 0.0, 5.0, 5.0)),
        ("3".to_string(), BBox::new(300.0, 200.0, 100.0, 50.0)),
    ];
    let frame = Frame {
        image: (1000, 750),
        input: (448, 448),
        regions: &regions,
    };
    for c in BoxConvention::ALL {
        let p = c.parse(text, &frame);
        for found in &p.boxes {
            let b = found.bbox;
            assert!(b.x1 < b.x2 && b.y1 < b.y2, "{c}: {b:?}");
            assert!(
                b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 1000.0 && b.y2 <= 750.0,
                "{c}: {b:?}"
            );
        }
        assert!(!p.text.contains('\u{1}'), "{c}");
    }

    if let Ok(m) = AgentManifest::parse(text, "fuzz.toml") {
        assert!(m.description.chars().count() <= 4000);
        for (role, v) in &m.models {
            if let Some(file) = v.as_str() {
                assert!(
                    !file.is_empty() && !file.contains('/') && !file.contains('\\') && file != "..",
                    "[models] {role} = {file:?}"
                );
            }
        }
        let _ = m.definition();
    }
});
