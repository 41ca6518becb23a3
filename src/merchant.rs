//! Validated merchant identifiers.
//!
//! A [`MerchantId`] is the key that separates one merchant's memory from another's, so it is
//! checked once, at the boundary, and is impossible to build unchecked afterwards.
//!
//! # Accepted form
//!
//! * 1 to [`MerchantId::MAX_LEN`] (64) characters;
//! * only ASCII letters `A-Z` `a-z`, digits `0-9`, underscore `_` and hyphen `-`;
//! * the first character is a letter or a digit.
//!
//! Identifiers are case-sensitive (`MID1` and `mid1` are two merchants) and are never
//! normalised. The charset deliberately excludes every character with a meaning in the places
//! ids are spliced into: `:` `*` `?` `[` `{` `}` (Redis key names and patterns), `.` and `/`
//! (paths), `%` and `'` (SQL `LIKE` and quoting), whitespace and control characters (logs).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A merchant identifier that has passed validation (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MerchantId(String);

/// Why a string is not a valid [`MerchantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerchantIdError {
    /// The id is the empty string.
    #[error("merchant id is empty")]
    Empty,
    /// The id is longer than [`MerchantId::MAX_LEN`] bytes.
    #[error("merchant id is {len} bytes long; the limit is {max}", max = MerchantId::MAX_LEN)]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// The id contains a character outside the allowed charset.
    #[error(
        "merchant id contains {found} at position {position}; only ASCII letters, digits, '_' and '-' are allowed"
    )]
    InvalidChar {
        /// The offending character, escaped for safe display (e.g. `'\u{7}'`).
        found: String,
        /// Character position (0-based) of the offending character.
        position: usize,
    },
    /// The id starts with `_` or `-`.
    #[error("merchant id must start with an ASCII letter or digit")]
    BadStart,
}

impl MerchantId {
    /// Longest accepted id, in bytes (equal to characters, since only ASCII is accepted).
    pub const MAX_LEN: usize = 64;

    /// Validates `s` and wraps it.
    pub fn parse(s: &str) -> Result<MerchantId, MerchantIdError> {
        if s.is_empty() {
            return Err(MerchantIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(MerchantIdError::TooLong { len: s.len() });
        }
        for (position, c) in s.chars().enumerate() {
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(MerchantIdError::InvalidChar {
                    found: format!("'{}'", c.escape_default()),
                    position,
                });
            }
        }
        if s.starts_with(['_', '-']) {
            return Err(MerchantIdError::BadStart);
        }
        Ok(MerchantId(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MerchantId({})", self.0)
    }
}

impl AsRef<str> for MerchantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for MerchantId {
    type Err = MerchantIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MerchantId::parse(s)
    }
}

impl TryFrom<String> for MerchantId {
    type Error = MerchantIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        MerchantId::parse(&s)
    }
}

impl TryFrom<&str> for MerchantId {
    type Error = MerchantIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        MerchantId::parse(s)
    }
}

impl From<MerchantId> for String {
    fn from(id: MerchantId) -> String {
        id.0
    }
}

impl Serialize for MerchantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MerchantId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        MerchantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in ["MID001", "m", "0", "acme-corp_42", &"a".repeat(64)] {
            let id = MerchantId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
        }
    }

    #[test]
    fn rejects_hostile_ids_with_the_right_reason() {
        assert_eq!(MerchantId::parse(""), Err(MerchantIdError::Empty));
        assert_eq!(
            MerchantId::parse(&"x".repeat(10 * 1024)),
            Err(MerchantIdError::TooLong { len: 10 * 1024 })
        );
        assert_eq!(
            MerchantId::parse(&"a".repeat(65)),
            Err(MerchantIdError::TooLong { len: 65 })
        );
        for (bad, pos) in [
            ("*", 0),
            ("..", 0),
            ("MID001:*", 6),
            ("a b", 1),
            ("a\u{7}", 1),
            ("ab\n", 2),
            ("caf\u{e9}", 3),
            ("MID{1}", 3),
            ("a/b", 1),
            ("a%", 1),
            ("MID\u{0}", 3),
        ] {
            match MerchantId::parse(bad) {
                Err(MerchantIdError::InvalidChar { position, .. }) => {
                    assert_eq!(position, pos, "{bad:?}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert_eq!(MerchantId::parse("-a"), Err(MerchantIdError::BadStart));
        assert_eq!(MerchantId::parse("_a"), Err(MerchantIdError::BadStart));
    }

    #[test]
    fn error_messages_escape_control_characters() {
        let msg = MerchantId::parse("a\u{1b}[31m").unwrap_err().to_string();
        assert!(!msg.contains('\u{1b}'), "{msg:?}");
        assert!(msg.contains("\\u{1b}"), "{msg:?}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = MerchantId::parse("MID001").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"MID001\"");
        let back: MerchantId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<MerchantId>("\"MID001:*\"").unwrap_err();
        assert!(err.to_string().contains("only ASCII letters"), "{err}");
        assert!(serde_json::from_str::<MerchantId>("\"\"").is_err());
    }
}
