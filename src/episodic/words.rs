//! The words of episode summaries and queries as both legs of the hybrid search and the
//! hints see them: lower-cased alphanumeric words, Snowball-stemmed, and the English function
//! and question words a query drops.

/// Lower-cased alphanumeric words of `text`.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// Indexed tokens of `text`: lower-cased alphanumeric words, Snowball-stemmed (English).
pub(crate) fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    words(text).map(|w| stem(&w))
}

/// Query tokens: like [`tokens`], without stop words (question words included).
pub(crate) fn query_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    words(text).filter(|w| !is_stop(w)).map(|w| stem(&w))
}

fn stem(word: &str) -> String {
    static STEMMER: std::sync::OnceLock<rust_stemmers::Stemmer> = std::sync::OnceLock::new();
    STEMMER
        .get_or_init(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English))
        .stem(word)
        .into_owned()
}

/// Whether lower-cased `t` is an English function or question word.
pub(crate) fn is_stop(t: &str) -> bool {
    STOP_WORDS.binary_search(&t).is_ok()
}

/// English function words and question words (sorted for binary search).
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "both", "but", "by", "can", "could", "did", "do", "does", "doing",
    "during", "each", "for", "from", "had", "has", "have", "having", "he", "her", "here", "hers",
    "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "kind", "me", "might", "my",
    "of", "on", "or", "our", "s", "she", "should", "so", "some", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "to", "was", "we", "were", "what",
    "when", "where", "which", "who", "whom", "whose", "why", "will", "with", "would", "you",
    "your",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn query_tokens_drop_function_words_and_stem() {
        let t: Vec<String> = query_tokens("What did the refunds REFUND?").collect();
        assert_eq!(t, vec!["refund", "refund"]);
        assert!(is_stop("will") && !is_stop("refund"));
    }
}
