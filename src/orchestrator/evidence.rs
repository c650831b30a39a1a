//! Evidence gathered about one image: every finding of every agent call, numbered as regions
//! (`r1`, `r2`, …) that answers cite, and rendered compactly for a text controller.

use serde::{Deserialize, Serialize};

use crate::agents::{Finding, FindingKind};
use crate::vision::BBox;

/// One numbered finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub id: String,
    pub agent: String,
    pub bbox: BBox,
    pub text: String,
    pub kind: FindingKind,
    pub score: f32,
}

/// All regions found so far, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    regions: Vec<Region>,
}

impl Evidence {
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn get(&self, id: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    /// Adds a finding and returns its region id; a finding already held (same text, nearly the
    /// same box) keeps its id, so a zoomed re-read does not duplicate regions.
    pub fn add(&mut self, agent: &str, f: &Finding) -> String {
        if let Some(r) = self
            .regions
            .iter()
            .find(|r| r.kind == f.kind && r.text == f.text && r.bbox.iou(&f.bbox) > 0.7)
        {
            return r.id.clone();
        }
        let id = format!("r{}", self.regions.len() + 1);
        self.regions.push(Region {
            id: id.clone(),
            agent: agent.to_string(),
            bbox: f.bbox,
            text: f.text.clone(),
            kind: f.kind,
            score: f.score,
        });
        id
    }
}

/// Renders regions for the controller, one per line: `r7 [x1,y1,x2,y2] TEXT` (objects:
/// `r7 [..] object: PHRASE (score 0.62)`).
pub fn render(regions: &[&Region]) -> String {
    let mut out = String::new();
    for r in regions {
        let b = r.bbox.rounded();
        let what = match r.kind {
            FindingKind::Text => r.text.clone(),
            FindingKind::Object => format!("object: {} (score {:.2})", r.text, r.score),
        };
        out.push_str(&format!(
            "{} [{},{},{},{}] {}\n",
            r.id, b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64, what
        ));
    }
    out.pop();
    out
}
