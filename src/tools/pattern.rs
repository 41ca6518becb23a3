//! A small, linear-time regular-expression matcher for the `pattern` keyword of tool schemas.
//!
//! Supported syntax (a subset of ECMA-262, which JSON Schema uses):
//!
//! * literals, `.` (any character except `\n` and `\r`), escaped punctuation (`\.`, `\-`, ...);
//! * character classes `[a-z0-9_]`, negated classes `[^...]`, and the escapes `\d \w \s` and
//!   their negations `\D \W \S` (ASCII meanings), also inside classes;
//! * quantifiers `*`, `+`, `?`, `{n}`, `{n,}` and `{n,m}` (counts up to 1000) on a single atom;
//! * anchors `^` at the very start and `$` at the very end. As in JSON Schema, an unanchored
//!   pattern matches anywhere in the string.
//!
//! Groups, alternation, back-references, lazy quantifiers and look-around are rejected when
//! the pattern is compiled, so a schema can never silently mean something else.
//!
//! Matching simulates the automaton over the set of reachable positions, so the cost is
//! `O(len(text) × len(pattern))` whatever the input: no backtracking blow-up on hostile text.

/// Largest repetition count accepted in `{n}`, `{n,}` and `{n,m}`.
const MAX_REPEAT: usize = 1000;
/// Largest number of atoms a pattern may expand to.
const MAX_ITEMS: usize = 4096;

/// A compiled pattern: literals, `.`, classes `[a-z]`/`[^...]`, `\d \w \s` (and negations),
/// quantifiers `* + ? {n} {n,} {n,m}` on single atoms, `^` first and `$` last; unanchored
/// patterns match anywhere. Groups and alternation are rejected by [`Pattern::compile`].
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    items: Vec<Item>,
    anchored_start: bool,
    anchored_end: bool,
}

#[derive(Debug, Clone)]
enum Class {
    Any,
    Set {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
}

impl Class {
    fn literal(c: char) -> Class {
        Class::Set {
            ranges: vec![(c, c)],
            negated: false,
        }
    }

    fn matches(&self, c: char) -> bool {
        match self {
            Class::Any => c != '\n' && c != '\r',
            Class::Set { ranges, negated } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rep {
    One,
    Optional,
    Star,
}

#[derive(Debug, Clone)]
struct Item {
    class: Class,
    rep: Rep,
}

const DIGITS: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

/// The ranges of `\d`, `\w`, `\s` (and whether the escape is negated), or `None`.
fn shorthand(c: char) -> Option<(&'static [(char, char)], bool)> {
    match c {
        'd' => Some((DIGITS, false)),
        'D' => Some((DIGITS, true)),
        'w' => Some((WORD, false)),
        'W' => Some((WORD, true)),
        's' => Some((SPACE, false)),
        'S' => Some((SPACE, true)),
        _ => None,
    }
}

/// The character an escape like `\.` or `\n` stands for, or an error for unsupported escapes.
fn escaped_literal(c: char) -> Result<char, String> {
    match c {
        'n' => Ok('\n'),
        't' => Ok('\t'),
        'r' => Ok('\r'),
        c if c.is_ascii_punctuation() => Ok(c),
        c => Err(format!("the escape \\{c} is not supported")),
    }
}

impl Pattern {
    /// Compiles `source`, or says which construct is not supported.
    pub fn compile(source: &str) -> Result<Pattern, String> {
        let chars: Vec<char> = source.chars().collect();
        let mut start = 0;
        let mut end = chars.len();
        let anchored_start = chars.first() == Some(&'^');
        if anchored_start {
            start = 1;
        }
        let mut anchored_end = false;
        if end > start && chars[end - 1] == '$' {
            // `\$` at the end is a literal dollar, `\\$` is an escaped backslash then an anchor.
            let backslashes = chars[start..end - 1]
                .iter()
                .rev()
                .take_while(|&&c| c == '\\')
                .count();
            if backslashes % 2 == 0 {
                anchored_end = true;
                end -= 1;
            }
        }
        let mut items: Vec<Item> = Vec::new();
        // Whether the last item can take a quantifier (an atom that was not quantified yet).
        let mut quantifiable = false;
        let mut i = start;
        while i < end {
            let c = chars[i];
            match c {
                '\\' => {
                    let next = *chars
                        .get(i + 1)
                        .filter(|_| i + 1 < end)
                        .ok_or("the pattern ends with a lone backslash")?;
                    let class = match shorthand(next) {
                        Some((ranges, negated)) => Class::Set {
                            ranges: ranges.to_vec(),
                            negated,
                        },
                        None => Class::literal(escaped_literal(next)?),
                    };
                    items.push(Item {
                        class,
                        rep: Rep::One,
                    });
                    quantifiable = true;
                    i += 2;
                }
                '[' => {
                    let (class, next) = parse_class(&chars, i + 1, end)?;
                    items.push(Item {
                        class,
                        rep: Rep::One,
                    });
                    quantifiable = true;
                    i = next;
                }
                '.' => {
                    items.push(Item {
                        class: Class::Any,
                        rep: Rep::One,
                    });
                    quantifiable = true;
                    i += 1;
                }
                '*' | '+' | '?' | '{' => {
                    if !quantifiable {
                        return Err(format!(
                            "the quantifier {c} at position {i} does not follow a single atom"
                        ));
                    }
                    let (min, max, next) = parse_quantifier(&chars, i, end)?;
                    let atom = items.pop().ok_or("a quantifier has nothing to repeat")?;
                    for _ in 0..min {
                        items.push(atom.clone());
                    }
                    match max {
                        None => items.push(Item {
                            class: atom.class,
                            rep: Rep::Star,
                        }),
                        Some(max) => {
                            for _ in min..max {
                                items.push(Item {
                                    class: atom.class.clone(),
                                    rep: Rep::Optional,
                                });
                            }
                        }
                    }
                    if items.len() > MAX_ITEMS {
                        return Err(format!(
                            "the pattern expands to more than {MAX_ITEMS} atoms"
                        ));
                    }
                    quantifiable = false;
                    i = next;
                }
                '(' | ')' | '|' => {
                    return Err(format!(
                        "groups and alternation ({c} at position {i}) are not supported"
                    ))
                }
                '^' | '$' => {
                    return Err(format!(
                    "the anchor {c} is only supported at the start (^) or end ($) of the pattern"
                ))
                }
                ']' | '}' => return Err(format!("unbalanced {c} at position {i}")),
                c => {
                    items.push(Item {
                        class: Class::literal(c),
                        rep: Rep::One,
                    });
                    quantifiable = true;
                    i += 1;
                }
            }
        }
        Ok(Pattern {
            source: source.to_owned(),
            items,
            anchored_start,
            anchored_end,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches `text` (anywhere, unless anchored).
    pub fn is_match(&self, text: &str) -> bool {
        let n = self.items.len();
        let mut cur = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        cur[0] = true;
        self.close(&mut cur);
        if !self.anchored_end && cur[n] {
            return true;
        }
        for c in text.chars() {
            next.iter_mut().for_each(|s| *s = false);
            let mut alive = false;
            for (pos, item) in self.items.iter().enumerate() {
                if cur[pos] && item.class.matches(c) {
                    let to = if item.rep == Rep::Star { pos } else { pos + 1 };
                    next[to] = true;
                    alive = true;
                }
            }
            if !self.anchored_start {
                next[0] = true;
                alive = true;
            }
            if !alive {
                return false;
            }
            self.close(&mut next);
            if !self.anchored_end && next[n] {
                return true;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur[n]
    }

    /// Adds the positions reachable by skipping optional and starred atoms.
    fn close(&self, states: &mut [bool]) {
        for (pos, item) in self.items.iter().enumerate() {
            if states[pos] && item.rep != Rep::One {
                states[pos + 1] = true;
            }
        }
    }
}

/// Parses a class body starting after `[`; returns the class and the index after `]`.
fn parse_class(chars: &[char], mut i: usize, end: usize) -> Result<(Class, usize), String> {
    let negated = chars.get(i) == Some(&'^') && i < end;
    if negated {
        i += 1;
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    loop {
        if i >= end {
            return Err("a character class [ is not closed".into());
        }
        let c = chars[i];
        if c == ']' {
            if ranges.is_empty() {
                return Err("empty character classes are not supported".into());
            }
            return Ok((Class::Set { ranges, negated }, i + 1));
        }
        let lo = if c == '\\' {
            let next = *chars
                .get(i + 1)
                .filter(|_| i + 1 < end)
                .ok_or("a character class ends with a lone backslash")?;
            i += 2;
            if let Some((set, neg)) = shorthand(next) {
                if neg {
                    return Err(format!(
                        "the negated escape \\{next} is not supported inside a class"
                    ));
                }
                ranges.extend_from_slice(set);
                continue;
            }
            escaped_literal(next)?
        } else {
            i += 1;
            c
        };
        // A range `lo-hi`, unless the `-` is the last character of the class.
        if i + 1 < end && chars[i] == '-' && chars[i + 1] != ']' {
            let hi = if chars[i + 1] == '\\' {
                let esc = *chars
                    .get(i + 2)
                    .filter(|_| i + 2 < end)
                    .ok_or("a character class ends with a lone backslash")?;
                i += 3;
                escaped_literal(esc)?
            } else {
                i += 2;
                chars[i - 1]
            };
            if hi < lo {
                return Err(format!("the class range {lo}-{hi} is out of order"));
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// Parses the quantifier at `i`; returns (min, max (None = unbounded), index after it).
fn parse_quantifier(
    chars: &[char],
    i: usize,
    end: usize,
) -> Result<(usize, Option<usize>, usize), String> {
    let (min, max, next) = match chars[i] {
        '*' => (0, None, i + 1),
        '+' => (1, None, i + 1),
        '?' => (0, Some(1), i + 1),
        _ => {
            let close = chars[i..end]
                .iter()
                .position(|&c| c == '}')
                .map(|p| i + p)
                .ok_or("a quantifier { is not closed")?;
            let body: String = chars[i + 1..close].iter().collect();
            let number = |s: &str| -> Result<usize, String> {
                let n: usize = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("the quantifier {{{body}}} is malformed"))?;
                if n > MAX_REPEAT {
                    return Err(format!(
                        "the quantifier {{{body}}} exceeds the limit of {MAX_REPEAT}"
                    ));
                }
                Ok(n)
            };
            let (min, max) = match body.split_once(',') {
                None => {
                    let n = number(&body)?;
                    (n, Some(n))
                }
                Some((lo, hi)) if hi.trim().is_empty() => (number(lo)?, None),
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if hi < lo {
                        return Err(format!("the quantifier {{{body}}} is out of order"));
                    }
                    (lo, Some(hi))
                }
            };
            (min, max, close + 1)
        }
    };
    if next < end && matches!(chars[next], '?' | '+' | '*' | '{') {
        return Err(format!(
            "lazy, possessive or stacked quantifiers (at position {next}) are not supported"
        ));
    }
    Ok((min, max, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::compile(p).unwrap().is_match(s)
    }

    #[test]
    fn anchored_id_patterns() {
        let p = "^pay_[A-Za-z0-9]{6,32}$";
        assert!(m(p, "pay_ABC123"));
        assert!(m(p, "pay_UzaUtgiBLvDUZm"));
        assert!(!m(p, "pay_ABC12"));
        assert!(!m(p, "pay_ABC123!"));
        assert!(!m(p, "xpay_ABC123"));
        assert!(!m(p, "pay_ABC123\n"));
        assert!(!m(p, "pay_"));
        assert!(!m(p, &format!("pay_{}", "a".repeat(33))));
        assert!(m(p, &format!("pay_{}", "a".repeat(32))));
        assert!(!m(p, "PAY_ABC123"));
    }

    #[test]
    fn unanchored_patterns_search() {
        assert!(m("ab", "xxabyy"));
        assert!(!m("ab", "a b"));
        assert!(m("^ab", "abyy"));
        assert!(!m("^ab", "xab"));
        assert!(m("ab$", "xab"));
        assert!(!m("ab$", "abx"));
        assert!(m("", "anything"));
        assert!(m("^$", ""));
        assert!(!m("^$", "x"));
    }

    #[test]
    fn quantifiers_classes_and_escapes() {
        assert!(m(r"^\d+$", "0123"));
        assert!(!m(r"^\d+$", ""));
        assert!(m(r"^\d*$", ""));
        assert!(m(r"^a?b$", "b"));
        assert!(m(r"^a?b$", "ab"));
        assert!(!m(r"^a?b$", "aab"));
        assert!(m(r"^\w{2,}$", "ab_9"));
        assert!(!m(r"^\w{2,}$", "a"));
        assert!(m(r"^[^\s]+$", "nospace"));
        assert!(!m(r"^\S+$", "has space"));
        assert!(m(r"^a\.b$", "a.b"));
        assert!(!m(r"^a\.b$", "axb"));
        assert!(m(r"^a.b$", "axb"));
        assert!(!m(r"^a.b$", "a\nb"));
        assert!(m(r"^[a-c-]+$", "a-c"));
        assert!(m(r"^cost \$$", "cost $"));
        assert!(m(r"^x{3}$", "xxx"));
        assert!(!m(r"^x{3}$", "xx"));
        assert!(m("^é+$", "éé"));
    }

    #[test]
    fn unsupported_syntax_is_rejected() {
        for bad in [
            "(a)", "a|b", "a**", "a*?", "*a", "[a", "a{2", "a{x}", "a{3,2}", r"\b", "a^", "[]",
            r"a\", "x{5000}", "[z-a]",
        ] {
            assert!(Pattern::compile(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn hostile_input_is_linear() {
        // A classic backtracking killer for naive engines.
        let p = Pattern::compile(&format!("^{}{}$", "a?".repeat(30), "a".repeat(30))).unwrap();
        assert!(p.is_match(&"a".repeat(30)));
        assert!(!p.is_match(&"a".repeat(61)));
        let q = Pattern::compile("^a*a*a*a*a*b$").unwrap();
        assert!(!q.is_match(&"a".repeat(10_000)));
    }
}
