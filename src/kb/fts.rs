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
    if chosen.is_empty() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let quoted: Vec<String> = chosen
        .into_iter()
        .filter(|t| seen.insert(t.to_lowercase()))
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    Some(quoted.join(" OR "))
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

    #[test]
    fn inner_quotes_are_doubled() {
        assert_eq!(sanitize("a\"b").as_deref(), Some("\"a\"\"b\""));
    }
}
