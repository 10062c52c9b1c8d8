//! The point a branch is taken at: now, a WAL position, or a moment. Times are read the way
//! people paste them — RFC 3339 (`2026-12-07T00:12:34.5Z`) or Postgres's own `now()` output
//! (`2026-12-07 00:12:34.512345+00`) — and handed to Postgres as RFC 3339 in UTC, so that both
//! sides agree on the instant whatever the server's time zone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::wal::Lsn;

/// Where a branch's data is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The source's durable position when the branch is asked for.
    Now,
    /// Everything before this WAL position (`recovery_target_lsn`).
    Lsn(Lsn),
    /// Every transaction committed up to this moment (`recovery_target_time`).
    Time(SystemTime),
}

impl Target {
    /// From a request's `at` (a time) and `lsn`; neither is "now", both is an error.
    pub fn from_request(at: Option<&str>, lsn: Option<&str>) -> Result<Target, String> {
        match (at, lsn) {
            (Some(_), Some(_)) => Err("give either a time (at) or an LSN (lsn), not both".into()),
            (Some(at), None) => parse_time(at).map(Target::Time),
            (None, Some(lsn)) => Lsn::parse(lsn)
                .map(Target::Lsn)
                .ok_or_else(|| format!("invalid input syntax for type pg_lsn: \"{lsn}\"")),
            (None, None) => Ok(Target::Now),
        }
    }
}

/// A moment as RFC 3339 in UTC with microseconds, which Postgres reads as a `timestamptz`.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// A moment as Postgres prints a `timestamptz` in UTC (`2026-12-07 00:12:34.500000+00`): the
/// form `recovery_target_time` takes at the postmaster's start, when no time zone
/// abbreviation (such as `Z`) is loaded yet.
pub fn format_for_postgres(time: SystemTime) -> String {
    format_time(time).replace('T', " ").replace('Z', "+00")
}

/// Parses `YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]` followed by `Z`, ` UTC`, `±HH`, `±HHMM` or
/// `±HH:MM` (none means UTC).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let invalid = || format!("invalid input syntax for type timestamp with time zone: \"{text}\"");
    let trimmed = text.trim();
    let (date, rest) = trimmed.split_once(['T', 't', ' ']).ok_or_else(invalid)?;
    let mut date_parts = date.splitn(3, '-');
    let mut number = |max_digits: usize| -> Option<i64> {
        let part = date_parts.next()?;
        (!part.is_empty() && part.len() <= max_digits && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let (year, month, day) = (
        number(4).ok_or_else(invalid)?,
        number(2).ok_or_else(invalid)?,
        number(2).ok_or_else(invalid)?,
    );
    let rest = rest.trim();
    let (clock, offset_seconds) = split_offset(rest).ok_or_else(invalid)?;
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = two_digits(clock_parts.next()).ok_or_else(invalid)?;
    let minute: i64 = two_digits(clock_parts.next()).ok_or_else(invalid)?;
    let (second, nanos) = match clock_parts.next() {
        None => (0, 0),
        Some(seconds) => {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
            let whole = two_digits(Some(whole)).ok_or_else(invalid)?;
            if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let nanos = format!("{fraction:0<9}").parse::<u32>().unwrap_or(0);
            (whole, nanos)
        }
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("date/time field value out of range: \"{text}\""));
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    if seconds < 0 {
        return Err(format!("date/time field value out of range: \"{text}\""));
    }
    Ok(UNIX_EPOCH + Duration::new(seconds as u64, nanos))
}

fn two_digits(part: Option<&str>) -> Option<i64> {
    let part = part?;
    (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
        .then(|| part.parse().ok())
        .flatten()
}

/// The clock part and the offset east of UTC in seconds.
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest
        .strip_suffix(['Z', 'z'])
        .or_else(|| rest.strip_suffix(" UTC"))
        .or_else(|| rest.strip_suffix("UTC"))
    {
        return Some((clock.trim_end(), 0));
    }
    let Some(at) = rest.rfind(['+', '-']) else {
        return Some((rest, 0));
    };
    let (clock, offset) = rest.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (hours, minutes) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
        _ => return None,
    };
    Some((clock.trim_end(), sign * (hours * 3600 + minutes * 60)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    #[test]
    fn postgres_and_rfc3339_times_name_the_same_instant() {
        // 2026-12-07 00:12:34 UTC
        let instant = 1_796_602_354;
        assert_eq!(
            parse_time("2026-12-07 00:12:34.512345+00").unwrap(),
            at(instant, 512_345_000)
        );
        assert_eq!(
            parse_time("2026-12-07T00:12:34.512345Z").unwrap(),
            at(instant, 512_345_000)
        );
        assert_eq!(
            parse_time("2026-12-07 01:12:34+01:00").unwrap(),
            at(instant, 0)
        );
        assert_eq!(
            parse_time("2026-12-06 19:42:34-0430").unwrap(),
            at(instant, 0)
        );
        assert_eq!(
            parse_time("2026-12-07 00:12:34 UTC").unwrap(),
            at(instant, 0)
        );
        assert_eq!(parse_time("2026-12-07T00:12").unwrap(), at(instant - 34, 0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), UNIX_EPOCH);
        assert_eq!(
            parse_time("2024-02-29T12:00:00Z").unwrap(),
            at(1_709_208_000, 0)
        );
    }

    #[test]
    fn a_parsed_time_prints_back_as_utc_rfc3339() {
        let time = parse_time("2026-12-07 01:12:34.5+01").unwrap();
        assert_eq!(format_time(time), "2026-12-07T00:12:34.500000Z");
        assert_eq!(format_for_postgres(time), "2026-12-07 00:12:34.500000+00");
        assert_eq!(parse_time(&format_for_postgres(time)).unwrap(), time);
    }

    #[test]
    fn bad_times_are_refused_in_postgres_words() {
        for text in [
            "yesterday",
            "2026-12-07",
            "2026-13-07 00:00:00",
            "2026-12-07 24:00:00",
            "2026-12-07 00:00:00+1",
            "2026-12-07 00:00:00.1234567890",
            "2026-1x-07 00:00:00",
        ] {
            let e = parse_time(text).unwrap_err();
            assert!(e.contains(text), "{e}");
        }
    }

    #[test]
    fn a_request_names_one_target_at_most() {
        assert_eq!(Target::from_request(None, None).unwrap(), Target::Now);
        assert_eq!(
            Target::from_request(None, Some("0/3000060")).unwrap(),
            Target::Lsn(Lsn(0x300_0060))
        );
        assert!(matches!(
            Target::from_request(Some("2026-12-07 00:00:00+00"), None).unwrap(),
            Target::Time(_)
        ));
        assert!(Target::from_request(Some("2026-12-07 00:00:00"), Some("0/1")).is_err());
        assert!(Target::from_request(None, Some("nope"))
            .unwrap_err()
            .contains("pg_lsn"));
    }
}
