//! What a search query says besides its words: the one speaker it names, and the calendar
//! date it gives. The hybrid index prefers the episodes that match these hints: they are
//! ranked among themselves at full weight, the others at a lower one (see
//! [`MerchantIndex::search`](super::hybrid::MerchantIndex::search)); measured on LoCoMo in
//! `BENCHMARKS.md`, "Episode retrieval on LoCoMo: speaker and date hints".
//!
//! A speaker is who an episode is by or about, the string `metadata.speaker` of the episode.
//! A query *names* a speaker when the first word of the speaker's name is a word of the query
//! (case-insensitive, so `"Melanie's kids"` names `Melanie`). A first word that is also a
//! function word, a month or a weekday (`"Will"`, `"May"`, `"The Support Team"`) names nobody:
//! ordinary queries use it.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{Days, NaiveDate};
use regex::Regex;

/// Days before a date given in a query that still count as "that day" (a session that
/// started late the evening before, or a time zone apart).
pub const DAYS_BEFORE: u64 = 1;
/// Days after a date given in a query that still count: an event is often recorded a little
/// after it happened ("I went yesterday").
pub const DAYS_AFTER: u64 = 1;

/// Weekdays: words that name no speaker.
const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The lower-cased word a speaker is named by in a query: the first alphanumeric word of the
/// name, if it has at least two characters and is not a function word, month or weekday.
pub(crate) fn call_name(speaker: &str) -> Option<String> {
    let first = speaker
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?
        .to_lowercase();
    let common = super::words::is_stop(&first)
        || MONTHS.contains(&first.as_str())
        || WEEKDAYS.contains(&first.as_str());
    (first.chars().count() >= 2 && !common).then_some(first)
}

/// The speakers of one merchant by the word that names them: call name → indices into the
/// merchant's speaker list. Built once per index, so a query costs one lookup per word.
#[derive(Debug, Default)]
pub(crate) struct CallNames(HashMap<String, Vec<u32>>);

impl CallNames {
    /// The call names of `speakers`.
    pub(crate) fn of(speakers: &[String]) -> CallNames {
        let mut map: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, s) in speakers.iter().enumerate() {
            if let Some(n) = call_name(s) {
                map.entry(n).or_default().push(i as u32);
            }
        }
        CallNames(map)
    }

    /// Indices of the speakers `query` names, ascending, each once.
    pub(crate) fn named_in(&self, query: &str) -> Vec<u32> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<u32> = Vec::new();
        for word in query.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            if let Some(ids) = self.0.get(&word.to_lowercase()) {
                out.extend(ids);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity() * 4 + 64)
            .sum()
    }
}

/// Indices into `speakers` of those `query` names.
#[cfg(test)]
fn named_speakers(query: &str, speakers: &[String]) -> Vec<usize> {
    CallNames::of(speakers)
        .named_in(query)
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

/// `query` without the names of `speakers` (every one it names, and a possessive `'s` after
/// one), for the text whose embedding searches a merchant's episodes. The keyword leg still
/// sees the names, and the speaker hint prefers the one speaker a query names; in the
/// embedding a name only pulls the query towards every episode that mentions that person
/// (measured in `BENCHMARKS.md`: +0.02 recall@10 on LoCoMo). A query that is nothing but
/// names is returned unchanged.
pub fn dense_query_text(query: &str, speakers: &[String]) -> String {
    let names: HashSet<String> = speakers.iter().filter_map(|s| call_name(s)).collect();
    if names.is_empty() {
        return query.to_owned();
    }
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while !rest.is_empty() {
        let start = rest.find(char::is_alphanumeric).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric())
            .unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        if names.contains(&word.to_lowercase()) {
            for possessive in ["'s", "\u{2019}s", "'S", "\u{2019}S"] {
                if let Some(after) = rest.strip_prefix(possessive) {
                    if !after.starts_with(char::is_alphanumeric) {
                        rest = after;
                        break;
                    }
                }
            }
        } else {
            out.push_str(word);
        }
    }
    let collapsed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let has_words = collapsed.chars().any(char::is_alphanumeric);
    if has_words {
        collapsed
    } else {
        query.to_owned()
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The month (1–12) of an English month name or its usual abbreviation.
fn month_of(name: &str) -> Option<u32> {
    let n = name.to_lowercase();
    let n = n.trim_end_matches('.');
    MONTHS
        .iter()
        .position(|m| {
            *m == n || (n.len() >= 3 && m.starts_with(n) && (n.len() == 3 || n == "sept"))
        })
        .map(|i| i as u32 + 1)
}

const MONTH_RE: &str = "(january|february|march|april|may|june|july|august|september|october|\
                        november|december|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\\.?";

static ISO_DAY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})\b").expect("valid regex"));
static ISO_MONTH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([0-9]{4})-([0-9]{1,2})\b").expect("valid regex"));
static DAY_MONTH_YEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b([0-9]{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?\s+{MONTH_RE},?\s+([0-9]{{4}})\b"
    ))
    .expect("valid regex")
});
static MONTH_DAY_YEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b{MONTH_RE}\s+([0-9]{{1,2}})(?:st|nd|rd|th)?,?\s+([0-9]{{4}})\b"
    ))
    .expect("valid regex")
});
static MONTH_YEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"(?i)\b{MONTH_RE},?\s+(?:of\s+)?([0-9]{{4}})\b")).expect("valid regex")
});
/// A year alone only after a word that makes it one ("in 2022", "during 2021"), so that
/// amounts and order numbers are not read as years.
static YEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:in|during|since|from|throughout|year)\s+(1[89][0-9][0-9]|2[0-9][0-9][0-9])\b",
    )
    .expect("valid regex")
});

fn num<T: std::str::FromStr>(caps: &regex::Captures<'_>, i: usize) -> Option<T> {
    caps.get(i)?.as_str().parse().ok()
}

fn month_span(year: i32, month: u32) -> Option<(NaiveDate, NaiveDate)> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = first.checked_add_months(chrono::Months::new(1))?;
    Some((first, next.pred_opt()?))
}

fn day_span(year: i32, month: u32, day: u32) -> Option<(NaiveDate, NaiveDate)> {
    let d = NaiveDate::from_ymd_opt(year, month, day)?;
    Some((
        d.checked_sub_days(Days::new(DAYS_BEFORE)).unwrap_or(d),
        d.checked_add_days(Days::new(DAYS_AFTER)).unwrap_or(d),
    ))
}

/// The calendar date `query` gives, as the inclusive span of days it covers, the most
/// specific form found winning: a day (`"9 October, 2022"`, `"October 9, 2022"`,
/// `"2022-10-09"`, widened by [`DAYS_BEFORE`] and [`DAYS_AFTER`]), else a month (`"May 2022"`,
/// `"2022-05"`), else a year after a preposition (`"in 2022"`). Relative dates ("last May")
/// need a "now" the index does not have and are not read.
pub fn date_span(query: &str) -> Option<(NaiveDate, NaiveDate)> {
    let iso_day = || {
        let c = ISO_DAY.captures(query)?;
        day_span(num(&c, 1)?, num(&c, 2)?, num(&c, 3)?)
    };
    let day_month_year = || {
        let c = DAY_MONTH_YEAR.captures(query)?;
        day_span(num(&c, 3)?, month_of(c.get(2)?.as_str())?, num(&c, 1)?)
    };
    let month_day_year = || {
        let c = MONTH_DAY_YEAR.captures(query)?;
        day_span(num(&c, 3)?, month_of(c.get(1)?.as_str())?, num(&c, 2)?)
    };
    let iso_month = || {
        let c = ISO_MONTH.captures(query)?;
        month_span(num(&c, 1)?, num(&c, 2)?)
    };
    let month_year = || {
        let c = MONTH_YEAR.captures(query)?;
        month_span(num(&c, 2)?, month_of(c.get(1)?.as_str())?)
    };
    let year = || {
        let c = YEAR.captures(query)?;
        let y: i32 = num(&c, 1)?;
        Some((
            NaiveDate::from_ymd_opt(y, 1, 1)?,
            NaiveDate::from_ymd_opt(y, 12, 31)?,
        ))
    };
    iso_day()
        .or_else(day_month_year)
        .or_else(month_day_year)
        .or_else(iso_month)
        .or_else(month_year)
        .or_else(year)
}

/// [`date_span`] as inclusive bounds in microseconds since the epoch (UTC), for comparing
/// with an episode's `occurred_at`.
pub(crate) fn date_span_us(query: &str) -> Option<(i64, i64)> {
    let (lo, hi) = date_span(query)?;
    let start = lo.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    let end = hi
        .succ_opt()?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp_micros()
        - 1;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn dates_in_the_usual_english_forms_are_read() {
        let day = |y: i32, m: u32, dd: u32| Some((d(y, m, dd - 1), d(y, m, dd + 1)));
        assert_eq!(
            date_span("What did Nate do on 25 May, 2022?"),
            day(2022, 5, 25)
        );
        assert_eq!(date_span("on October 9, 2022 he"), day(2022, 10, 9));
        assert_eq!(date_span("the 9th of October 2022"), day(2022, 10, 9));
        assert_eq!(date_span("Oct 9th, 2022"), day(2022, 10, 9));
        assert_eq!(date_span("refund on 2024-03-15?"), day(2024, 3, 15));
        assert_eq!(
            date_span("What happened in February 2024?"),
            Some((d(2024, 2, 1), d(2024, 2, 29)))
        );
        assert_eq!(
            date_span("disputes from 2023-12"),
            Some((d(2023, 12, 1), d(2023, 12, 31)))
        );
        assert_eq!(
            date_span("chargebacks in 2021"),
            Some((d(2021, 1, 1), d(2021, 12, 31)))
        );
        assert_eq!(date_span("the first of the month"), None);
        assert_eq!(date_span("order 123456 last May"), None);
        // A bare number is an amount, not a year; Unicode digits are not dates.
        assert_eq!(date_span("a refund of 2000 dollars"), None);
        assert_eq!(
            date_span("on \u{0661}\u{0662} May, 2022"),
            Some((d(2022, 5, 1), d(2022, 5, 31)))
        );
        // A day wins over a month and a year given earlier in the text.
        assert_eq!(
            date_span("in 2021, or rather May 2022, on 3 May 2022"),
            day(2022, 5, 3)
        );
        // A day that does not exist falls back to the month it names.
        assert_eq!(
            date_span("on 31 February, 2023"),
            Some((d(2023, 2, 1), d(2023, 2, 28)))
        );
    }

    #[test]
    fn a_day_span_in_microseconds_covers_whole_days() {
        let (lo, hi) = date_span_us("2022-05-25").unwrap();
        let start = d(2022, 5, 24).and_hms_opt(0, 0, 0).unwrap().and_utc();
        let end = d(2022, 5, 27).and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert_eq!(lo, start.timestamp_micros());
        assert_eq!(hi, end.timestamp_micros() - 1);
    }

    #[test]
    fn speakers_are_named_by_their_first_word_in_any_case() {
        let speakers = vec![
            "Melanie".to_owned(),
            "Caroline Jones".to_owned(),
            "x".to_owned(),
            "Will Smith".to_owned(),
            "May".to_owned(),
            "The Support Team".to_owned(),
        ];
        assert_eq!(
            named_speakers("What do Melanie's kids like?", &speakers),
            [0]
        );
        assert_eq!(named_speakers("did caroline call", &speakers), [1]);
        assert_eq!(named_speakers("Melanie and CAROLINE", &speakers), [0, 1]);
        assert!(named_speakers("what did x say", &speakers).is_empty());
        assert!(named_speakers("Melanies", &speakers).is_empty());
        // Function words, months and weekdays name nobody.
        assert!(named_speakers("when will the refund land in May?", &speakers).is_empty());
    }

    #[test]
    fn names_are_taken_out_of_the_dense_query_text() {
        let speakers = vec!["Melanie".to_owned(), "Nate".to_owned()];
        assert_eq!(
            dense_query_text("What do Melanie's kids like?", &speakers),
            "What do kids like?"
        );
        assert_eq!(
            dense_query_text("What did Nate\u{2019}s dog eat with nate", &speakers),
            "What did dog eat with"
        );
        assert_eq!(
            dense_query_text("Natex and Melanies", &speakers),
            "Natex and Melanies"
        );
        assert_eq!(dense_query_text("Nate?", &speakers), "Nate?");
        assert_eq!(dense_query_text("no names here", &[]), "no names here");
    }
}
