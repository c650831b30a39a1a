//! The OCR agent through the controller-facing interface: tool definition from the manifest,
//! JSON arguments, async call.

mod common;

use p2g::agents::{AgentError, DynAgent};
use p2g::vision::{Image, LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ocr_tool_is_described_and_called_with_json() {
    let agent: &dyn DynAgent = common::agent();
    let def = agent.definition();
    assert_eq!(def.name, "ocr");
    assert!(def.description.contains("text"));
    assert_eq!(def.parameters["properties"]["region"]["type"], "array");

    let image = Image::open(&common::fixture("header.png"), &LoadOptions::default()).unwrap();
    let all = agent.call(&image, serde_json::json!({})).await.unwrap();
    assert_eq!(
        all.findings.len(),
        all.output["lines"].as_array().unwrap().len()
    );
    assert!(all.findings.iter().any(|f| f.text == "789417-W"));
    let lines = all.output["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["text"] == "789417-W"), "{lines:?}");

    // Only the band of the company name, not the registration number below it.
    let top = agent
        .call(&image, serde_json::json!({ "region": [0, 75, 463, 117] }))
        .await
        .unwrap();
    let texts: Vec<&str> = top.output["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(texts.iter().any(|t| t.contains("TAMAN")), "{texts:?}");
    assert!(!texts.contains(&"789417-W"), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_errors_not_panics() {
    let agent: &dyn DynAgent = common::agent();
    let image = Image::open(&common::fixture("header.png"), &LoadOptions::default()).unwrap();
    for args in [
        serde_json::json!({ "region": [1, 2, 3] }),
        serde_json::json!({ "zoom": true }),
        serde_json::json!({ "region": "everywhere" }),
    ] {
        let e = agent.call(&image, args.clone()).await.unwrap_err();
        assert!(matches!(e, AgentError::Arguments { .. }), "{args}: {e}");
    }
    let reversed = agent
        .call(&image, serde_json::json!({ "region": [300, 200, 10, 10] }))
        .await
        .unwrap_err();
    assert!(reversed.to_string().contains("empty inside"), "{reversed}");
    let outside = agent
        .call(
            &image,
            serde_json::json!({ "region": [5000, 5000, 6000, 6000] }),
        )
        .await
        .unwrap_err();
    assert!(outside.to_string().contains("empty inside"), "{outside}");
}
