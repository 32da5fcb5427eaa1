//! Serde adapters for the values a person writes with a unit: durations
//! (`"500ms"`, `"1m30s"`), sizes (`"64KiB"`, `"1MB"`, or bytes) and counts.
//! Each one reads what the file says, refuses the rest with a sentence that
//! says what was expected (never a Rust type name), and writes itself back
//! with its unit, so `wsbridge check` prints `"60s"` and `"4MiB"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::MAX_DURATION;

/// A duration as written: a string with its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

/// A size as written: a string with a unit, or a bare count of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

/// A whole number; its range (positive, zero allowed) is the key's business
/// and is checked where the key is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Count(pub i64);

/// Parses a size: `"64KiB"` (powers of 1024), `"1MB"` (powers of 1000), or a
/// bare integer of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    // parse-size's default mode is the contract's: "MB" decimal, "MiB" binary.
    parse_size::parse_size(text.trim()).map_err(|e| e.to_string())
}

/// Parses a duration in human form and refuses one that timers could not
/// add to the clock.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("expected a duration like \"500ms\", \"15s\" or \"1m30s\", got {text:?} ({e})")
    })?;
    if d > MAX_DURATION {
        return Err(format!("{text:?} is too long (at most 100 years)"));
    }
    Ok(d)
}

/// A duration the way a person writes it, exact so that it reads back to the
/// same value: whole hours as `"2h"`, whole seconds as `"90s"`, else the
/// largest of ms, us, ns that is exact.
pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        if secs >= 3600 && secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else {
            format!("{secs}s")
        }
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// A size with the largest unit that states it exactly: binary units first
/// (`"4MiB"`), then decimal (`"1MB"`), else bytes (`"1234B"`); zero is `"0"`.
pub(crate) fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    const BINARY: [&str; 6] = ["EiB", "PiB", "TiB", "GiB", "MiB", "KiB"];
    for (i, unit) in BINARY.iter().enumerate() {
        let scale = 1u64 << (10 * (6 - i));
        if bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    const DECIMAL: [&str; 6] = ["EB", "PB", "TB", "GB", "MB", "KB"];
    for (i, unit) in DECIMAL.iter().enumerate() {
        let scale = 1000u64.pow(6 - i as u32);
        if bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"500ms\", \"15s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "expected a duration string with its unit, like \"{n}s\" or \"{n}ms\", got the bare number {n}"
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "expected a duration string with its unit, like \"{n}s\" or \"{n}ms\", got the bare number {n}"
                )))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "expected a duration string with its unit, like \"1500ms\" or \"15s\", got the bare number {n}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str =
            "expected a size like \"64KiB\", \"1MiB\", \"1MB\" or a count of bytes";
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64KiB\", \"1MiB\", \"1MB\" or a count of bytes")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s)
                    .map(Size)
                    .map_err(|e| E::custom(format!("{EXPECTED}, got {s:?} ({e})")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{EXPECTED}, got {n}")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "{EXPECTED} (a fraction needs a unit string, like \"1536KiB\"), got {n}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number, like 100")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count, E> {
                Ok(Count(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
                i64::try_from(n)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Count, E> {
                Err(E::custom(format!("expected a whole number, got {n}")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Count, E> {
                Err(E::custom(format!(
                    "expected a whole number without quotes, like 100, got the string {s:?}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_contract_units() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
    }

    #[test]
    fn sizes_print_with_the_unit_that_states_them_exactly() {
        for (bytes, text) in [
            (0, "0"),
            (4 << 20, "4MiB"),
            (1024, "1KiB"),
            (256 << 20, "256MiB"),
            (1_000_000, "1MB"),
            (64_000, "64KB"),
            (1234, "1234B"),
            (u64::MAX, "18446744073709551615B"),
            (1 << 63, "8EiB"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn durations_print_exactly_with_their_unit() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(3), "3us"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
            (MAX_DURATION, "876600h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }
}
