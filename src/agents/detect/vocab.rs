//! From the controller's words to a closed-vocabulary detector's classes.
//!
//! A COCO detector knows 80 class names; a controller (or a person) asks for "the black mug",
//! "that player", "bags". A phrase is matched whole first, then by its last word (the head
//! noun: "black mug" -> "mug"), then by any of its words; each word is tried as written and
//! made singular, against the class names and the synonyms of the agent manifest. A phrase
//! that reaches no class is reported as such, so the caller can answer with what the
//! detector does know instead of an empty list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agents::AgentError;

/// Class names and synonyms (`[vocabulary]` of the manifest).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub classes: Vec<String>,
    synonyms: BTreeMap<String, Vec<usize>>,
}

/// How one phrase was understood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhraseMatch {
    pub phrase: String,
    /// The classes it reaches (empty: none).
    pub classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    classes: Vec<String>,
    #[serde(default)]
    synonyms: BTreeMap<String, Vec<String>>,
}

impl Vocabulary {
    /// Reads `[vocabulary]`; a synonym naming no class is a manifest error.
    pub fn from_table(table: &toml::Table, origin: &str) -> Result<Self, AgentError> {
        let err = |reason: String| AgentError::Manifest {
            path: origin.to_string(),
            reason,
        };
        let t: Table = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| err(format!("[vocabulary]: {e}")))?;
        if t.classes.is_empty() {
            return Err(err("[vocabulary] lists no classes".into()));
        }
        let classes: Vec<String> = t.classes.iter().map(|c| c.trim().to_lowercase()).collect();
        let mut synonyms = BTreeMap::new();
        for (word, targets) in &t.synonyms {
            let ids = targets
                .iter()
                .map(|c| {
                    classes
                        .iter()
                        .position(|k| *k == c.trim().to_lowercase())
                        .ok_or_else(|| {
                            err(format!(
                                "synonym {word:?} names {c:?}, which is not a class"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            synonyms.insert(word.trim().to_lowercase(), ids);
        }
        Ok(Self { classes, synonyms })
    }

    /// The class indices `phrase` reaches, best guess first; empty when none.
    pub fn lookup(&self, phrase: &str) -> Vec<usize> {
        // The noun phrase ends where a clause or a place begins: "the player who is
        // shooting", "the monitor at the top", "the bag the man carries" is about a bag.
        const ENDS: &[&str] = &[
            "who", "which", "that", "whose", "with", "without", "on", "in", "at", "of", "near",
            "under", "above", "below", "behind", "beside", "next", "by", "from", "to", "for",
            "holding", "wearing", "carrying", "is", "are", "the", "a", "an", "this", "those",
        ];
        let all: Vec<String> = phrase
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(|w| w.to_lowercase())
            .collect();
        // Leading articles are not an end.
        let start = all
            .iter()
            .position(|w| {
                !["the", "a", "an", "this", "that", "those", "these"].contains(&w.as_str())
            })
            .unwrap_or(all.len());
        let words: Vec<String> = all[start..]
            .iter()
            .take_while(|w| !ENDS.contains(&w.as_str()))
            .cloned()
            .collect();
        if words.is_empty() {
            return Vec::new();
        }
        let whole = words.join(" ");
        let mut tries: Vec<String> = vec![whole.clone(), singular(&whole)];
        if words.len() > 1 {
            // Two-word names inside a longer phrase ("the red stop sign").
            for pair in words.windows(2).rev() {
                let p = pair.join(" ");
                tries.push(singular(&p));
                tries.push(p);
            }
        }
        // The head noun; other words are adjectives ("orange sign" is no orange).
        if let Some(w) = words.last() {
            tries.push(w.clone());
            tries.push(singular(w));
        }
        for t in tries {
            let hit = self.word(&t);
            if !hit.is_empty() {
                return hit;
            }
        }
        Vec::new()
    }

    fn word(&self, w: &str) -> Vec<usize> {
        if let Some(i) = self.classes.iter().position(|c| c == w) {
            return vec![i];
        }
        self.synonyms.get(w).cloned().unwrap_or_default()
    }

    /// How each phrase was understood.
    pub fn understand(&self, phrases: &[String]) -> Vec<PhraseMatch> {
        phrases
            .iter()
            .map(|p| PhraseMatch {
                phrase: p.clone(),
                classes: self
                    .lookup(p)
                    .into_iter()
                    .map(|i| self.classes[i].clone())
                    .collect(),
            })
            .collect()
    }
}

/// An English plural made singular, by the common rules (a heuristic: "glasses" -> "glass",
/// "people" stays for the synonym table, "buses" -> "bus", "knives" -> "knife").
fn singular(w: &str) -> String {
    let last = w.rsplit(' ').next().unwrap_or(w);
    let head = &w[..w.len() - last.len()];
    let s = if let Some(stem) = last.strip_suffix("ives") {
        format!("{stem}ife")
    } else if let Some(stem) = last.strip_suffix("ies").filter(|s| s.len() > 1) {
        format!("{stem}y")
    } else if let Some(stem) = ["sses", "shes", "ches", "xes", "uses"]
        .iter()
        .find_map(|suf| last.strip_suffix(suf).map(|s| (s, *suf)))
        .map(|(s, suf)| format!("{s}{}", &suf[..suf.len() - 2]))
    {
        stem
    } else if last.ends_with('s') && !last.ends_with("ss") && last.len() > 3 {
        last[..last.len() - 1].to_string()
    } else {
        last.to_string()
    };
    format!("{head}{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::AgentManifest;

    fn coco() -> Vocabulary {
        let m = AgentManifest::embedded("detect-coco").unwrap();
        Vocabulary::from_table(&m.vocabulary, "agents/detect_coco.toml").unwrap()
    }

    fn names(v: &Vocabulary, p: &str) -> Vec<String> {
        v.lookup(p)
            .into_iter()
            .map(|i| v.classes[i].clone())
            .collect()
    }

    #[test]
    fn the_controllers_words_reach_coco_classes() {
        let v = coco();
        assert_eq!(v.classes.len(), 80);
        assert_eq!(names(&v, "black mug"), ["cup"]);
        assert_eq!(names(&v, "ball"), ["sports ball"]);
        assert_eq!(names(&v, "the player who is shooting"), ["person"]);
        assert_eq!(names(&v, "Women"), ["person"]);
        assert_eq!(names(&v, "bag"), ["handbag", "backpack", "suitcase"]);
        assert_eq!(names(&v, "red stop sign"), ["stop sign"]);
        assert_eq!(names(&v, "buses"), ["bus"]);
        assert_eq!(names(&v, "wine glasses"), ["wine glass"]);
        assert_eq!(names(&v, "knives"), ["knife"]);
        assert_eq!(names(&v, "monitor at the top"), ["tv"]);
        assert_eq!(
            names(&v, "bag the man carries"),
            ["handbag", "backpack", "suitcase"]
        );
        assert!(v.lookup("flag").is_empty());
        assert!(v.lookup("orange sign on the court").is_empty());
        assert!(v.lookup("").is_empty());
    }

    #[test]
    fn a_synonym_naming_no_class_is_refused() {
        let t: toml::Table =
            toml::from_str("classes = [\"cup\"]\n[synonyms]\nmug = [\"teacup\"]").unwrap();
        let e = Vocabulary::from_table(&t, "x.toml").unwrap_err();
        assert!(e.to_string().contains("teacup"), "{e}");
    }
}
