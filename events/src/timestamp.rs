//! Wall-clock instants recorded on events.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// A UTC instant in nanoseconds since the Unix epoch. Stored as an integer in
/// MessagePack (exact, cheap) and shown as RFC 3339 in JSON and tables, which
/// is what `--at` time travel parses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub i64);

/// Why a string is not an RFC 3339 instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time (e.g. 2026-11-29T10:00:00Z): {0:?}")]
pub struct ParseTimestampError(pub String);

impl Timestamp {
    /// Nanoseconds since the epoch.
    pub fn from_unix_nanos(n: i64) -> Self {
        Timestamp(n)
    }

    /// Milliseconds since the epoch.
    pub fn unix_millis(&self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Parses an RFC 3339 string such as `2026-11-29T10:00:00Z`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, ParseTimestampError> {
        let dt = OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map_err(|_| ParseTimestampError(s.to_string()))?;
        let n = dt.unix_timestamp_nanos();
        i64::try_from(n)
            .map(Timestamp)
            .map_err(|_| ParseTimestampError(s.to_string()))
    }

    /// RFC 3339 with nanosecond precision where needed.
    pub fn to_rfc3339(&self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128) {
            Ok(dt) => dt.format(&Rfc3339).unwrap_or_else(|_| self.0.to_string()),
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Timestamp::parse_rfc3339(&s).map_err(de::Error::custom)
        } else {
            i64::deserialize(d).map(Timestamp)
        }
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for Timestamp {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        (0i64..4_000_000_000_000_000_000)
            .prop_map(Timestamp)
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-29T10:00:00.5Z").unwrap();
        assert_eq!(t.0, 1_795_946_400_500_000_000);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
