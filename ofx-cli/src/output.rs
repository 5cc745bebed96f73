//! Writing results: aligned tables for people, JSON for programs; times and durations as text.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::CliError;

/// Standard output, written line by line (flushed, so that `tail -f` shows each line at once).
/// A closed pipe ends the command quietly ([`CliError::Closed`]).
#[derive(Debug, Default)]
pub(crate) struct Out;

impl Out {
    /// Writes `text` and a newline.
    pub(crate) fn line(&mut self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(CliError::from)
    }

    /// Writes one JSON document (pretty) or line (compact, for streams).
    pub(crate) fn json(
        &mut self,
        value: &serde_json::Value,
        compact: bool,
    ) -> Result<(), CliError> {
        let text = if compact {
            serde_json::to_string(value)
        } else {
            serde_json::to_string_pretty(value)
        }
        .map_err(|error| CliError::Other(format!("cannot write JSON: {error}")))?;
        self.line(&text)
    }

    /// Writes a table: a header row, then the rows, columns aligned.
    pub(crate) fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let format = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, cell) in cells.enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if i + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            line.trim_end().to_owned()
        };
        self.line(&format(&mut header.iter().copied()))?;
        for row in rows {
            self.line(&format(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }
}

/// `time` as RFC 3339 in UTC, with `digits` of the fraction of a second (0, 3 or 6).
pub(crate) fn timestamp(time: SystemTime, digits: usize) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let fraction = match digits {
        0 => String::new(),
        3 => format!(".{:03}", since.subsec_millis()),
        _ => format!(".{:06}", since.subsec_micros()),
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// The date of a day number (days since 1970-01-01), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// A time for JSON: RFC 3339 with microseconds.
pub(crate) fn json_time(time: SystemTime) -> serde_json::Value {
    serde_json::Value::String(timestamp(time, 6))
}

/// A time for a table: RFC 3339 with milliseconds.
pub(crate) fn table_time(time: SystemTime) -> String {
    timestamp(time, 3)
}

/// A duration in the largest two units: `850ms`, `42s`, `3m 5s`, `2h 10m`, `4d 3h`.
pub(crate) fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.subsec_millis());
    }
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Parses a duration: numbers each followed by a unit (`ms`, `s`, `m`, `h`, `d`, `w`), such as
/// `30m`, `1h30m`, `7d`; a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration".to_owned());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}`: a unit is missing after the last number"))?;
        if digits == 0 {
            return Err(format!("`{text}`: expected a number, as in 30m, 2h or 7d"));
        }
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}`: the number is too large"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_secs = match unit.trim() {
            "ms" => {
                total += Duration::from_millis(number);
                rest = tail;
                continue;
            }
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (use ms, s, m, h, d or w)"
                ));
            }
        };
        total += Duration::from_secs(number.saturating_mul(unit_secs));
        rest = tail;
    }
    Ok(total)
}

/// `text` cut to `max` characters, with `…` when it was longer; newlines as spaces.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut short: String = flat.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let time = UNIX_EPOCH + Duration::from_micros(1_796_000_000_123_456);
        assert_eq!(timestamp(time, 6), "2026-11-30T00:53:20.123456Z");
        assert_eq!(timestamp(time, 3), "2026-11-30T00:53:20.123Z");
        assert_eq!(timestamp(UNIX_EPOCH, 0), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap, 0), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn short_durations_keep_two_units() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m 5s");
        assert_eq!(short_duration(Duration::from_secs(90_000)), "1d 1h");
    }
}
