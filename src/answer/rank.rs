//! Choosing the answer among copies of the evidence by the controller's own likelihood.
//!
//! Every way an answer is copied ends here: an answer shape's spans (greedy search from the
//! likeliest first tokens, exact scoring of each, the likeliest start, or a rule), and the
//! general case — every span of the evidence scored exactly against saying "not in the
//! evidence" ([`choose`]). The model's likelihood of a span as the answer string's content,
//! closed, is its score: the same measure for a date, a team's name or "not found".

use std::collections::HashMap;

use super::copy::CopyConstraint;
use super::shapes::Rank;
use crate::controller::llm::{LlmError, Session};

/// A copied answer: its text (JSON-escaped, as written), whether its string was closed,
/// and the regions it came from.
pub type Copied = (String, bool, Vec<String>);

/// Bounds of the greedy copy search.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// First tokens a copy is tried with (1: greedy).
    pub alternatives: usize,
    /// Tokens of a copy.
    pub max_tokens: usize,
}

/// Copies the answer from the evidence. The few most likely first tokens that start a word of
/// the evidence are each continued greedily under the copy constraint, and the copy the model
/// finds most likely as a whole, closing quote included, wins. The first token alone is a
/// poor guide: Qwen writes numbers digit by digit, so the "2" of the "2018-10-19" it would
/// like to write starts the copy "20" (of the time "20:49:59"), while the copy that starts
/// with "1" ("19/10/2018") is the one it then finds likely to the end.
///
/// Returns the copied text (JSON-escaped, as written), whether its string was closed and the
/// regions it came from, or `None` when no allowed token starts a copy.
pub fn copy_search(
    s: &mut Session,
    limits: SearchLimits,
    source: &dyn CopyConstraint,
) -> Result<Option<Copied>, LlmError> {
    match (source.rank(), source.complete()) {
        (Rank::Whole, Some(copies)) => return exact_copy(s, source, &copies),
        (Rank::First, Some(copies)) => return first_copy(s, source, &copies),
        _ => {}
    }
    let lm = s.model().clone();
    let mark = s.mark()?;
    let firsts = s.top_allowed(limits.alternatives.max(1), |id, bytes| {
        lm.is_plain(id, bytes)
            && !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
            && source.begins(bytes)
    })?;
    // (log-probability, text, closed, tokens)
    let mut best: Option<(f64, String, bool, Vec<u32>)> = None;
    // The quote and the tokens that close the string, looked up once (a vocabulary scan).
    let mut closing: Option<(u32, Vec<u32>)> = None;
    let mut session_holds_best = false;
    let by_start = source.rank() == Rank::Start;
    for (i, &(id, first_lp)) in firsts.iter().enumerate() {
        // Ranked by their start, copies are not compared as wholes: nothing to give up on.
        let floor = match &best {
            Some(b) if !by_start => b.0,
            _ => f64::NEG_INFINITY,
        };
        // Alternatives come most likely first: one already below the best copy cannot win.
        if first_lp < floor {
            break;
        }
        if i > 0 {
            s.rewind(&mark);
        }
        s.take_logprob();
        s.give_up_below(floor);
        s.force(id, first_lp);
        let head = lm.token_bytes(id).to_vec();
        let (rest, closed, total) = match jump_forward(s, source, &head, &mut closing)? {
            Some((rest, lp)) => {
                s.give_up_below(f64::NEG_INFINITY);
                (rest, true, s.take_logprob() + lp)
            }
            None => {
                let copied = s.free_string(
                    limits.max_tokens.saturating_sub(1),
                    |so_far, piece, closes| {
                        let mut t = head.clone();
                        t.extend_from_slice(so_far);
                        t.extend_from_slice(piece);
                        source.allows(&t, closes)
                    },
                    |_| {},
                );
                s.give_up_below(f64::NEG_INFINITY);
                let (rest, closed) = copied?;
                (rest, closed, s.take_logprob())
            }
        };
        tracing::debug!(
            copy = %format_args!("{}{rest}", String::from_utf8_lossy(&head)),
            closed,
            logprob = total,
            first_logprob = first_lp,
            tokens = s.tokens_since(&mark).len(),
            "copy candidate"
        );
        // A copy that was given up (or ran out of tokens) only counts when nothing else does.
        let counts = best
            .as_ref()
            .is_none_or(|b| closed && (!b.2 || (!by_start && total > b.0)));
        session_holds_best = counts;
        if counts {
            let text = format!("{}{rest}", String::from_utf8_lossy(&head));
            best = Some((total, text, closed, s.tokens_since(&mark)));
        }
        // Alternatives come likeliest start first: the first finished copy is the one.
        if by_start && closed {
            break;
        }
    }
    let Some((_, text, closed, tokens)) = best else {
        return Ok(None);
    };
    if !session_holds_best {
        s.rewind(&mark);
        s.push_tokens(&tokens);
    }
    let cited = source.regions_of(text.as_bytes());
    Ok(Some((text, closed, cited)))
}

/// Where only one copy begins with `head`, runs its rest and the closing quote in one
/// forward pass (a token at a time, the rest of "BOOK TA -K (TAMAN DAYA) SDN BHD" took a
/// decode step per token: ~30 ms each, against ~4 ms each in one pass). Returns the rest and
/// its log-probability with the likeliest token that closes the string there, as the greedy
/// search scores a copy; `None` where more than one copy is left or the split is not between
/// whole characters.
fn jump_forward(
    s: &mut Session,
    source: &dyn CopyConstraint,
    head: &[u8],
    closing: &mut Option<(u32, Vec<u32>)>,
) -> Result<Option<(String, f64)>, LlmError> {
    let Some(rest) = source.only_completion(head) else {
        return Ok(None);
    };
    let (Ok(_), Ok(rest)) = (std::str::from_utf8(head), std::str::from_utf8(rest)) else {
        return Ok(None);
    };
    let lm = s.model().clone();
    if closing.is_none() {
        let Some(quote) = lm.encode("\"")?.first().copied() else {
            return Ok(None);
        };
        *closing = Some((quote, lm.plain_tokens_starting_with(b'"')));
    }
    let Some((quote, closers)) = closing.as_ref() else {
        return Ok(None);
    };
    let quote = *quote;
    let ids = if rest.is_empty() {
        Vec::new()
    } else {
        lm.encode(rest)?
    };
    let text = if ids.is_empty() { 0.0 } else { s.score(&ids)? };
    let close = s
        .next_logprobs(closers)?
        .into_iter()
        .fold(f64::NEG_INFINITY, f64::max);
    s.push_tokens(&[quote]);
    Ok(Some((rest.to_string(), text + close)))
}

/// Copies the answer from a known list of copies: the one the model finds most likely as a
/// whole, closing quote included, scored exactly (each copy is one forward pass). The greedy
/// search above follows one path per first token, so of "33.92" and "33.90" it only ever
/// sees the one whose last digit it prefers after "33.9"; here both are scored. As in the
/// greedy search, a copy ends with the likeliest token that closes the string there (`"`,
/// `",`, ...). A copy's first token bounds its score, so copies are tried likeliest first
/// token first and the search stops once no remaining copy can win.
fn exact_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    copies: &[&[u8]],
) -> Result<Option<Copied>, LlmError> {
    let lm = s.model().clone();
    let quote = lm.encode("\"")?.first().copied();
    let Some(quote) = quote else {
        return Ok(None);
    };
    let mut scored: Vec<(Vec<u32>, &[u8])> = Vec::new();
    for &copy in copies {
        let ids = lm.encode(&String::from_utf8_lossy(copy))?;
        if !ids.is_empty() {
            scored.push((ids, copy));
        }
    }
    let firsts: Vec<u32> = scored.iter().map(|(ids, _)| ids[0]).collect();
    let bounds = s.next_logprobs(&firsts)?;
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| bounds[b].total_cmp(&bounds[a]));
    let mark = s.mark()?;
    // The tokens that close the string where they start, looked up once for every copy.
    let closers = lm.plain_tokens_starting_with(b'"');
    // (log-probability, index)
    let mut best: Option<(f64, usize)> = None;
    for (n, &i) in order.iter().enumerate() {
        if best.is_some_and(|(lp, _)| bounds[i] <= lp) {
            break;
        }
        if n > 0 {
            s.rewind(&mark);
        }
        let text = s.score(&scored[i].0)?;
        let close = s
            .next_logprobs(&closers)?
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let lp = text + close;
        tracing::debug!(
            copy = %String::from_utf8_lossy(scored[i].1),
            logprob = lp,
            first_logprob = bounds[i],
            tokens = scored[i].0.len() + 1,
            "copy candidate"
        );
        if best.is_none_or(|(b, _)| lp > b) {
            best = Some((lp, i));
        }
    }
    let Some((_, i)) = best else {
        return Ok(None);
    };
    s.rewind(&mark);
    Ok(Some(take_copy(s, source, &scored[i].0, scored[i].1, quote)))
}

/// Takes the first of `copies` (the shape's spans in reading order) as the answer string,
/// closing it. The model is not asked; the debug log says the rule chose.
fn first_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    copies: &[&[u8]],
) -> Result<Option<Copied>, LlmError> {
    let lm = s.model().clone();
    let (Some(quote), Some(&copy)) = (lm.encode("\"")?.first().copied(), copies.first()) else {
        return Ok(None);
    };
    let ids = lm.encode(&String::from_utf8_lossy(copy))?;
    if ids.is_empty() {
        return Ok(None);
    }
    let taken = take_copy(s, source, &ids, copy, quote);
    tracing::debug!(copy = %taken.0, of = copies.len(), "copy by rank = first");
    Ok(Some(taken))
}

/// Writes the chosen copy (its tokens `ids`) and the closing quote into the session; returns
/// the copied text, closed, with the regions it came from.
fn take_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    ids: &[u32],
    copy: &[u8],
    quote: u32,
) -> Copied {
    s.push_tokens(ids);
    s.push_tokens(&[quote]);
    let text = String::from_utf8_lossy(copy).into_owned();
    (text, true, source.regions_of(copy))
}
/// What [`choose`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The winning candidate (an index into the texts), or `None` when saying the evidence
    /// does not hold the answer was likelier than every candidate (by the margin).
    pub chosen: Option<usize>,
    /// The log-probability of the likeliest "not in the evidence" phrase.
    pub not_found: f64,
    /// The best scored candidates, best first: (index, log-probability, calibrated score).
    /// Candidates the bound ruled out are not among them.
    pub top: Vec<(usize, f64, f64)>,
    /// Candidates scored exactly (the others could not win).
    pub scored: usize,
    /// Forward passes run.
    pub passes: usize,
}

/// How [`choose`] decides.
#[derive(Debug, Clone, Copy)]
pub struct ChooseLimits {
    /// A candidate may win only when its log-probability is above the likeliest
    /// "not in the evidence" phrase's minus this (positive: answers are preferred).
    pub margin: f64,
    /// At most this many forward passes over candidates (each one a span and every shorter
    /// span its tokens begin with); the rest are left unscored.
    pub max_passes: usize,
    /// Calibrated, only spans within this many nats of the likeliest span are candidates
    /// (what the question adds cannot make up more), and of those the likeliest `recheck`
    /// are scored against the neutral question.
    pub window: f64,
    pub recheck: usize,
    /// Weight of how surely a span was read (its `reads` entry, a log-probability) in the
    /// ranking: the answer is a span the question makes likely *and* the agent read right.
    /// It never decides whether the evidence answers at all.
    pub reading: f64,
}

/// The same prompt with the question's content taken away ("What is written here?"), to
/// calibrate against: a small model likes some spans whatever is asked (a lone letter, a
/// short number), and the answer should be the span the *question* makes likely —
/// `log p(span | question) - weight * log p(span | neutral question)` (PMI, Holtzman et al.
/// 2021, "Surface Form Competition").
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    /// The neutral prompt's tokens (up to where the assistant's turn opens).
    pub neutral_prompt: &'a [u32],
    /// How many of the session's tokens are the real prompt (the rest is the answer call
    /// written so far, which the neutral prompt gets too).
    pub prompt_len: usize,
    pub weight: f64,
}

/// Scores `texts` (answer string contents, JSON-escaped) and the `not_found` phrases as the
/// continuation of the answer string the session has opened, each closed with its likeliest
/// closing token, and returns the winner. The session is left where it was. `reads` holds,
/// per text, the log-probability that it was read right (empty: all read surely).
///
/// Whether the evidence answers at all is decided on plain likelihood: some span must be
/// likelier than "not in the evidence" (less the margin). Which span answers is decided on
/// the same likelihood or, with a [`Calibration`], on the likelihood the question adds.
/// Cheap where it can be: a candidate's first token bounds its score, so spans are scored
/// likeliest first token first and the search stops when no remaining span can win; and one
/// forward pass over a span scores every shorter candidate its tokens begin with ("Hollis"
/// with "Hollis Ave.").
pub fn choose(
    s: &mut Session,
    texts: &[String],
    reads: &[f64],
    not_found: &[String],
    limits: ChooseLimits,
    calibration: Option<Calibration<'_>>,
) -> Result<Choice, LlmError> {
    let lm = s.model().clone();
    let closers = lm.plain_tokens_starting_with(b'"');
    let mark = s.mark()?;
    let mut passes = 0;
    let mut nf = f64::NEG_INFINITY;
    let phrases: Vec<Vec<u32>> = not_found
        .iter()
        .map(|p| lm.encode(p))
        .collect::<Result<_, _>>()?;
    for ids in phrases.iter().filter(|p| !p.is_empty()) {
        s.rewind(&mark);
        passes += 1;
        if let Some(&(lp, end)) = s.score_prefixes(ids, &closers)?.last() {
            nf = nf.max(lp + end);
        }
    }
    s.rewind(&mark);
    let tokens: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| lm.encode(t))
        .collect::<Result<_, _>>()?;
    let mut by_tokens: HashMap<&[u32], usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if !t.is_empty() {
            by_tokens.entry(t.as_slice()).or_insert(i);
        }
    }
    let leaves = leaves(&tokens);
    let firsts: Vec<u32> = leaves.iter().map(|&i| tokens[i][0]).collect();
    let bounds = s.next_logprobs(&firsts)?;
    let mut order: Vec<usize> = (0..leaves.len()).collect();
    order.sort_by(|&a, &b| bounds[b].total_cmp(&bounds[a]));
    let floor = nf - limits.margin;
    let mut scores: HashMap<usize, f64> = HashMap::new();
    let mut best = f64::NEG_INFINITY;
    for &o in order.iter().take(limits.max_passes) {
        // Calibrated, a span below the best can still win, by up to the window.
        let bar = match calibration {
            Some(_) => floor.max(best - limits.window),
            None => best.max(floor),
        };
        if bounds[o] <= bar {
            break;
        }
        s.rewind(&mark);
        passes += 1;
        best = best.max(score_leaf(
            s,
            &tokens[leaves[o]],
            &closers,
            &by_tokens,
            &mut scores,
        )?);
    }
    s.rewind(&mark);
    // The candidates worth calibrating: answerable, within the window of the best, the
    // likeliest few.
    let mut contenders: Vec<(usize, f64)> = scores
        .iter()
        .map(|(&i, &lp)| (i, lp))
        .filter(|&(_, lp)| lp > floor && lp >= best - limits.window)
        .collect();
    contenders.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    contenders.truncate(limits.recheck);
    let mut neutral: HashMap<usize, f64> = HashMap::new();
    if let (Some(c), true) = (calibration, contenders.len() >= 2) {
        passes += calibrate(s, c, &contenders, &tokens, &closers, &mut neutral)?;
    }
    let weight = calibration.map_or(0.0, |c| c.weight);
    // How surely a span was read moves it as much as the question's own preference can:
    // a fragment of a line read at confidence 0.56 against a word read cleanly at 0.90,
    // when the question likes the two about as much.
    let read = |i: usize| limits.reading * reads.get(i).copied().unwrap_or(0.0);
    // Calibrated, only the rechecked contenders compete; otherwise every answerable span.
    let score = |i: usize, lp: f64| match neutral.get(&i) {
        Some(n) => lp - weight * n + read(i),
        None if neutral.is_empty() && lp > floor => lp + read(i),
        None => f64::NEG_INFINITY,
    };
    let mut top: Vec<(usize, f64, f64)> = scores
        .iter()
        .map(|(&i, &lp)| (i, lp, score(i, lp)))
        .collect();
    top.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then(b.1.total_cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    let scored = top.len();
    let chosen = top.first().filter(|t| t.1 > floor).map(|t| t.0);
    top.truncate(6);
    Ok(Choice {
        chosen,
        not_found: nf,
        top,
        scored,
        passes,
    })
}

/// Scores the `contenders` (index, log-probability) under the neutral prompt into `neutral`,
/// and puts the session back on the real prompt. Returns the forward passes run.
fn calibrate(
    s: &mut Session,
    c: Calibration<'_>,
    contenders: &[(usize, f64)],
    tokens: &[Vec<u32>],
    closers: &[u32],
    neutral: &mut HashMap<usize, f64>,
) -> Result<usize, LlmError> {
    let main = s.tokens();
    let mut other = c.neutral_prompt.to_vec();
    other.extend_from_slice(&main[c.prompt_len.min(main.len())..]);
    // Switching prompts is scoring, not a new prompt: the step's counters stay the real one's.
    let counted = s.stats_snapshot();
    s.set_prompt(&other);
    let neutral_mark = s.mark()?;
    let mut passes = 0;
    for &(i, _) in contenders {
        s.rewind(&neutral_mark);
        passes += 1;
        let by_tokens: HashMap<&[u32], usize> = HashMap::from([(tokens[i].as_slice(), i)]);
        score_leaf(s, &tokens[i], closers, &by_tokens, neutral)?;
    }
    s.set_prompt(&main);
    s.mark()?;
    s.restore_prompt_counts(counted);
    Ok(passes)
}

/// Scores one leaf span (one forward pass from where the session is): every candidate its
/// tokens begin with gets its log-probability, closed, in `scores`. Returns the best.
fn score_leaf(
    s: &mut Session,
    leaf: &[u32],
    closers: &[u32],
    by_tokens: &HashMap<&[u32], usize>,
    scores: &mut HashMap<usize, f64>,
) -> Result<f64, LlmError> {
    let mut best = f64::NEG_INFINITY;
    for (k, &(lp, end)) in s.score_prefixes(leaf, closers)?.iter().enumerate() {
        if let Some(&i) = by_tokens.get(&leaf[..=k]) {
            scores.insert(i, lp + end);
            best = best.max(lp + end);
        }
    }
    Ok(best)
}

/// The candidates whose tokens no other candidate's tokens extend: one pass over each
/// scores all the candidates they begin with.
fn leaves(tokens: &[Vec<u32>]) -> Vec<usize> {
    let mut sorted: Vec<usize> = (0..tokens.len())
        .filter(|&i| !tokens[i].is_empty())
        .collect();
    sorted.sort_by(|&a, &b| tokens[a].cmp(&tokens[b]));
    sorted.dedup_by(|a, b| tokens[*a] == tokens[*b]);
    // Sorted, the sequences a prefix begins come right after it.
    sorted
        .iter()
        .enumerate()
        .filter(|&(n, &i)| {
            sorted
                .get(n + 1)
                .is_none_or(|&j| !tokens[j].starts_with(&tokens[i]))
        })
        .map(|(_, &i)| i)
        .collect()
}

/// Writes `text` (JSON-escaped answer string contents) and the closing quote into the
/// session, as if the model had written them.
pub fn write_answer(s: &mut Session, text: &str) -> Result<(), LlmError> {
    let lm = s.model().clone();
    let quote = lm
        .encode("\"")?
        .first()
        .copied()
        .ok_or_else(|| LlmError::Tokenizer("no token for a quote".into()))?;
    let ids = lm.encode(text)?;
    s.push_tokens(&ids);
    s.push_tokens(&[quote]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_covers_the_shorter_spans_its_tokens_begin_with() {
        let t = vec![
            vec![1, 2],    // "Hollis"
            vec![1, 2, 3], // "Hollis Ave"
            vec![1, 2, 3, 4],
            vec![5],
            vec![1, 6],
            vec![],
            vec![5],
        ];
        let mut l = leaves(&t);
        l.sort();
        assert_eq!(l, [2, 3, 4]);
    }
}
