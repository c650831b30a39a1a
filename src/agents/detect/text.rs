//! The text side of Grounding DINO: caption, BERT WordPiece tokens, and the sub-sentence
//! attention mask and position ids that keep phrases from attending to each other.
//!
//! Grounding DINO reads all phrases in one caption ("black mug . red sign ."), but each phrase
//! is encoded as if alone: the reference implementation
//! (`generate_masks_with_special_tokens_and_transfer_map` in IDEA-Research's `bertwarper.py`)
//! builds an NxN mask with one block per phrase (the phrase's tokens plus its closing ".") and
//! restarts position ids at 0 in each block; [CLS] and [SEP] attend only to themselves. The
//! model was trained on exactly these inputs, so they are reproduced exactly here, and the
//! token span of each phrase (between its delimiters) is what its score is read from.

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

use crate::agents::AgentError;
use crate::models::ModelError;

/// Everything the model's text inputs are made of, for one caption (batch of one).
#[derive(Debug, Clone, PartialEq)]
pub struct TextInputs {
    pub input_ids: Vec<i64>,
    /// The tokenizer's 1-D mask: every token of a single caption is real.
    pub attention_mask: Vec<bool>,
    pub position_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    /// Row-major N x N sub-sentence self-attention mask.
    pub text_token_mask: Vec<bool>,
    /// Per phrase, the token positions `[start, end)` of its words (delimiters excluded).
    pub spans: Vec<(usize, usize)>,
}

impl TextInputs {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// A BERT (bert-base-uncased) WordPiece tokenizer from the model's `vocab.txt`, plus the ids of
/// the tokens that delimit phrases.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// [CLS], [SEP], "." and "?" (101, 102, 1012, 1029 in bert-base-uncased).
    delimiters: [u32; 4],
}

impl TextEncoder {
    /// Builds the tokenizer from a BERT vocabulary file (one token per line, id = line number).
    pub fn from_vocab(path: &Path) -> Result<Self, AgentError> {
        let bad = |reason: String| {
            AgentError::Model(ModelError::BadFormat {
                path: path.to_path_buf(),
                kind: "BERT vocabulary (vocab.txt, one token per line)".into(),
                reason,
            })
        };
        // Parsed once, by the tokenizer's own reader, so the delimiter ids are its ids.
        let vocab =
            WordPiece::read_file(&path.to_string_lossy()).map_err(|e| bad(e.to_string()))?;
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| bad(format!("it has no {t:?} token")))
        };
        let delimiters = [id("[CLS]")?, id("[SEP]")?, id(".")?, id("?")?];
        id("[UNK]")?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(model);
        // bert-base-uncased: clean text, split CJK characters, strip accents, lower-case.
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| bad(e.to_string()))?;
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        tokenizer.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), delimiters[1]),
            ("[CLS]".into(), delimiters[0]),
        )));
        Ok(Self {
            tokenizer,
            delimiters,
        })
    }

    /// The delimiter ids: [CLS], [SEP], ".", "?".
    pub fn delimiters(&self) -> [u32; 4] {
        self.delimiters
    }

    /// Encodes `phrases` (already cleaned by [`clean_phrases`]) as one caption.
    pub fn encode(&self, phrases: &[String]) -> Result<TextInputs, AgentError> {
        let caption = caption(phrases);
        let enc =
            self.tokenizer
                .encode(caption.as_str(), true)
                .map_err(|e| AgentError::Inference {
                    agent: "detect (tokenizer)".into(),
                    reason: e.to_string(),
                })?;
        let input_ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let delims: Vec<i64> = self.delimiters.iter().map(|&d| i64::from(d)).collect();
        let (text_token_mask, position_ids, spans) = sub_sentence_masks(&input_ids, &delims);
        if spans.len() != phrases.len() {
            return Err(AgentError::Arguments {
                agent: "detect".into(),
                reason: format!(
                    "the caption {caption:?} splits into {} phrases, not {}",
                    spans.len(),
                    phrases.len()
                ),
            });
        }
        let n = input_ids.len();
        Ok(TextInputs {
            attention_mask: vec![true; n],
            token_type_ids: vec![0; n],
            input_ids,
            position_ids,
            text_token_mask,
            spans,
        })
    }

    /// Encodes `phrases` as captions that each fit `max_tokens` (the model reads at most 256
    /// text tokens), packing phrases in order; each caption is one inference pass. A single
    /// phrase too long for one pass is an argument error.
    pub fn encode_passes(
        &self,
        phrases: &[String],
        max_tokens: usize,
    ) -> Result<Vec<(Vec<String>, TextInputs)>, AgentError> {
        let too_long = |p: &str, n: usize| AgentError::Arguments {
            agent: "detect".into(),
            reason: format!(
                "the phrase {p:?} is {n} tokens long; the model reads at most {max_tokens}"
            ),
        };
        let mut passes = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut encoded: Option<TextInputs> = None;
        for p in phrases {
            current.push(p.clone());
            let t = self.encode(&current)?;
            if t.len() <= max_tokens {
                encoded = Some(t);
                continue;
            }
            current.pop();
            let Some(full) = encoded.take() else {
                return Err(too_long(p, t.len()));
            };
            passes.push((std::mem::take(&mut current), full));
            current.push(p.clone());
            let alone = self.encode(&current)?;
            if alone.len() > max_tokens {
                return Err(too_long(p, alone.len()));
            }
            encoded = Some(alone);
        }
        if let Some(t) = encoded {
            passes.push((current, t));
        }
        Ok(passes)
    }
}

/// Cleans a list of phrases: lower-cased, whitespace collapsed, "." / "?" inside a phrase
/// turned into spaces (both delimit phrases, so they would split it), empty and repeated
/// phrases dropped.
pub fn clean_phrases<S: AsRef<str>>(raw: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let cleaned = r
            .as_ref()
            .to_lowercase()
            .replace(['.', '?'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !cleaned.is_empty() && !out.contains(&cleaned) {
            out.push(cleaned);
        }
    }
    out
}

/// Splits a caption written the Grounding DINO way ("black mug . red sign", "a cat. a dog.")
/// into cleaned phrases: as in the reference, every "." and "?" ends a phrase.
pub fn split_caption(caption: &str) -> Vec<String> {
    clean_phrases(&caption.split(['.', '?']).collect::<Vec<_>>())
}

/// The caption Grounding DINO was trained on: phrases joined with " . ", ending with ".".
pub fn caption(phrases: &[String]) -> String {
    let mut c = phrases.join(" . ");
    c.push_str(" .");
    c
}

/// The reference implementation's sub-sentence mask (row-major N x N), position ids and the
/// token span of each phrase, for one tokenised caption.
pub fn sub_sentence_masks(
    ids: &[i64],
    delimiters: &[i64],
) -> (Vec<bool>, Vec<i64>, Vec<(usize, usize)>) {
    let n = ids.len();
    let mut mask = vec![false; n * n];
    for i in 0..n {
        mask[i * n + i] = true;
    }
    let mut positions = vec![0i64; n];
    let mut spans = Vec::new();
    let mut previous = 0usize;
    for (col, id) in ids.iter().enumerate() {
        if !delimiters.contains(id) {
            continue;
        }
        if col != 0 && col != n - 1 {
            for r in previous + 1..=col {
                for c in previous + 1..=col {
                    mask[r * n + c] = true;
                }
                positions[r] = (r - previous - 1) as i64;
            }
            spans.push((previous + 1, col));
        }
        previous = col;
    }
    (mask, positions, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_reference_implementation() {
        // [CLS] black mug . red sign . [SEP]
        let ids = [101, 2304, 14757, 1012, 2417, 3696, 1012, 102];
        let (mask, pos, spans) = sub_sentence_masks(&ids, &[101, 102, 1012, 1029]);
        assert_eq!(pos, vec![0, 0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(spans, vec![(1, 3), (4, 6)]);
        let rows: Vec<String> = mask
            .chunks(8)
            .map(|r| r.iter().map(|&b| if b { '1' } else { '0' }).collect())
            .collect();
        assert_eq!(
            rows,
            [
                "10000000", "01110000", "01110000", "01110000", "00001110", "00001110", "00001110",
                "00000001"
            ]
        );
    }

    #[test]
    fn a_question_mark_also_closes_a_phrase() {
        let ids = [101, 7, 8, 1029, 9, 1012, 102];
        let (_, pos, spans) = sub_sentence_masks(&ids, &[101, 102, 1012, 1029]);
        assert_eq!(pos, vec![0, 0, 1, 2, 0, 1, 0]);
        assert_eq!(spans, vec![(1, 3), (4, 5)]);
    }

    #[test]
    fn phrases_are_cleaned_and_split() {
        assert_eq!(
            clean_phrases(&["The Black  Mug", "st. mary?", "the black mug", " . "]),
            vec!["the black mug", "st mary"]
        );
        assert_eq!(
            split_caption("A cat. a remote control.dog ? . "),
            vec!["a cat", "a remote control", "dog"]
        );
        assert_eq!(caption(&["a".into(), "b c".into()]), "a . b c .");
    }
}
