//! Turning free text into a safe FTS5 query: every term is quoted, so FTS5 operators in user
//! input (`"`, `*`, `NEAR`, `AND`/`OR`/`NOT`, `-`, `:`, `^`, parentheses) are plain text.

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "did", "for", "from",
    "how", "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "should", "so",
    "that", "the", "their", "then", "there", "this", "to", "was", "we", "what", "when", "where",
    "which", "who", "why", "will", "with", "you", "your", "mean", "means",
];

/// Builds an FTS5 MATCH expression from `query`: terms ORed together (BM25 ranks documents that
/// match more and rarer terms higher), stop words dropped unless nothing else is left. Returns
/// `None` when the query has no searchable characters.
pub fn sanitize(query: &str) -> Option<String> {
    let quoted = terms(query);
    if quoted.is_empty() {
        None
    } else {
        Some(quoted.join(" OR "))
    }
}

/// The query's searchable terms, each quoted as an FTS5 string (a one-term MATCH expression):
/// split on whitespace, trimmed of edge punctuation, stop words dropped unless nothing else is
/// left, case-insensitive duplicates removed, inner `"` doubled.
pub fn terms(query: &str) -> Vec<String> {
    let terms: Vec<String> = query
        .split(|c: char| c.is_whitespace())
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|t| t.chars().any(|c| c.is_alphanumeric()))
        .collect();
    let content: Vec<&String> = terms
        .iter()
        .filter(|t| !STOPWORDS.contains(&t.to_lowercase().as_str()))
        .collect();
    let chosen: Vec<&String> = if content.is_empty() {
        terms.iter().collect()
    } else {
        content
    };
    let mut seen = std::collections::HashSet::new();
    chosen
        .into_iter()
        .filter(|t| seen.insert(t.to_lowercase()))
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect()
}

/// How the keyword leg queries FTS5, chosen from the terms' document frequencies so that BM25
/// never has to score more than a bounded number of rows (FTS5 scores every match of a query
/// before it can sort: an OR of common words over 100k chunks costs tens of milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeywordPlan {
    /// No term matches anything.
    Nothing,
    /// OR the given terms and rank every match: their summed document frequency is within the
    /// budget. Holds all matching terms when they fit; otherwise the rarest ones that fit
    /// together (a common word adds little BM25 weight but many rows to score).
    Or(Vec<String>),
    /// Every matching term alone exceeds the budget: AND them together (falling back to the
    /// rarest term when the conjunction is empty) and rank only the most recent `budget` matches.
    Common(Vec<String>),
}

/// Chooses a [`KeywordPlan`] from `(term, capped document frequency)` pairs, where a frequency
/// above `budget` only says "more than `budget`". Terms matching nothing are dropped.
pub fn plan(dfs: &[(String, usize)], budget: usize) -> KeywordPlan {
    let mut live: Vec<&(String, usize)> = dfs.iter().filter(|(_, df)| *df > 0).collect();
    if live.is_empty() {
        return KeywordPlan::Nothing;
    }
    // Stable: ties keep query order.
    live.sort_by_key(|(_, df)| *df);
    let mut chosen = Vec::new();
    let mut total = 0usize;
    for (term, df) in &live {
        if total + df > budget {
            break;
        }
        total += df;
        chosen.push(term.clone());
    }
    if chosen.is_empty() {
        KeywordPlan::Common(live.iter().map(|(t, _)| t.clone()).collect())
    } else {
        KeywordPlan::Or(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_term_and_drops_stopwords() {
        assert_eq!(
            sanitize("what does GATEWAY_ERROR mean").as_deref(),
            Some("\"GATEWAY_ERROR\"")
        );
        assert_eq!(
            sanitize("refund NEAR(upi) -card \"x").as_deref(),
            Some("\"refund\" OR \"NEAR(upi\" OR \"card\" OR \"x\"")
        );
        assert_eq!(sanitize("the").as_deref(), Some("\"the\""));
        assert_eq!(sanitize("*** () \" -").as_deref(), None);
    }

    fn dfs(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
        pairs.iter().map(|(t, d)| (t.to_string(), *d)).collect()
    }

    #[test]
    fn plan_keeps_everything_that_fits_and_drops_common_terms_first() {
        let all = dfs(&[("\"refund\"", 40), ("\"pay_ABC123\"", 1), ("\"upi\"", 30)]);
        assert_eq!(
            plan(&all, 100),
            KeywordPlan::Or(vec![
                "\"pay_ABC123\"".into(),
                "\"upi\"".into(),
                "\"refund\"".into()
            ])
        );
        let big = dfs(&[
            ("\"refund\"", 1001),
            ("\"pay_ABC123\"", 1),
            ("\"upi\"", 700),
        ]);
        assert_eq!(
            plan(&big, 1000),
            KeywordPlan::Or(vec!["\"pay_ABC123\"".into(), "\"upi\"".into()])
        );
        let none = dfs(&[("\"zzz\"", 0)]);
        assert_eq!(plan(&none, 1000), KeywordPlan::Nothing);
        let common = dfs(&[("\"payment\"", 1001), ("\"zzz\"", 0), ("\"refund\"", 1001)]);
        assert_eq!(
            plan(&common, 1000),
            KeywordPlan::Common(vec!["\"payment\"".into(), "\"refund\"".into()])
        );
    }

    #[test]
    fn inner_quotes_are_doubled() {
        assert_eq!(sanitize("a\"b").as_deref(), Some("\"a\"\"b\""));
    }
}
