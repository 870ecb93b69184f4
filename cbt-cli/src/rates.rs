//! The one parser for rates (`--bwlimit`, `--link`, `bwlimit` in the
//! daemon's file), so that every rate option takes the same units.
//!
//! A bare number is bytes per second. Byte units K, M, G, T (also written
//! KB, KiB, ...) are powers of 1024: `--bwlimit` always meant that, and
//! scripts written for it must keep their meaning. Bit units kbit, Mbit,
//! Gbit, Tbit (also kbps, Mbps, ...) are powers of 1000, as link speeds
//! are quoted. A lone `b` (`10Mb`) is refused: half the world reads it as
//! bits, the other half as bytes. An optional `/s` may follow.
//!
//! Unlike rsync's `--bwlimit`, whose bare number means KiB/s, cbt's bare
//! number means bytes per second.

use crate::exit_codes::usage;

/// The smallest `--bwlimit`: below 1 KiB/s the pacing granularity (one
/// block at a time) makes the limit meaningless.
pub const MIN_BWLIMIT: u64 = 1024;

/// Parses a rate into bytes per second (positive and finite).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a rate (e.g. 500K, 10M, 100Mbit)"))?;
    let unit = unit.trim_start();
    let (power, binary, rest) = match unit.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some(c @ ('K' | 'M' | 'G' | 'T')) => {
            let power = match c {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                _ => 4,
            };
            match unit[1..].strip_prefix('i') {
                Some(rest) => (power, true, rest),
                None => (power, false, &unit[1..]),
            }
        }
        _ => (0, false, unit),
    };
    let bytes_per_unit = match rest {
        // Bytes: powers of 1024 with or without the `i`.
        "" | "B" | "Bps" => 1024f64.powi(power),
        "bit" | "bps" => {
            let base: f64 = if binary { 1024.0 } else { 1000.0 };
            base.powi(power) / 8.0
        }
        "b" => {
            let prefix = &unit[..unit.len() - 1];
            return Err(format!(
                "{s:?}: ambiguous unit {unit:?}: write bytes as {num}{prefix}B, bits as {num}{prefix}bit"
            ));
        }
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (bytes: K, M, G, T, powers of 1024; bits: kbit, Mbit, Gbit, Tbit, powers of 1000)"
            ))
        }
    };
    let rate = value * bytes_per_unit;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    Ok(rate)
}

/// Parses `--bwlimit` (or the daemon's `bwlimit`) into whole bytes per
/// second, at least [`MIN_BWLIMIT`]; a bad value is a usage error.
pub fn parse_bwlimit(s: &str) -> anyhow::Result<u64> {
    let rate = parse_rate(s).map_err(|e| usage(format!("bwlimit {e}")))?;
    if rate < MIN_BWLIMIT as f64 {
        return Err(usage(format!(
            "bwlimit {s:?}: at least 1K (1024 bytes) per second"
        )));
    }
    // Saturates at u64::MAX, far above any link.
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_powers_of_1024() {
        assert_eq!(parse_rate("4096").unwrap(), 4096.0);
        assert_eq!(parse_rate("64K").unwrap(), 65536.0);
        assert_eq!(parse_rate("64k").unwrap(), 65536.0);
        assert_eq!(parse_rate("2M").unwrap(), 2.0 * 1048576.0);
        assert_eq!(parse_rate("1.5M/s").unwrap(), 1.5 * 1048576.0);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10.0 * 1048576.0);
        assert_eq!(parse_rate("20MiB/s").unwrap(), 20.0 * 1048576.0);
        assert_eq!(parse_rate("1G").unwrap(), 1073741824.0);
        assert_eq!(parse_rate("3 MBps").unwrap(), 3.0 * 1048576.0);
        assert_eq!(parse_rate("1T").unwrap(), 1024f64.powi(4));
    }

    #[test]
    fn bits_are_powers_of_1000() {
        assert_eq!(parse_rate("100Mbit").unwrap(), 12_500_000.0);
        assert_eq!(parse_rate("1Gbit/s").unwrap(), 125_000_000.0);
        assert_eq!(parse_rate("8kbps").unwrap(), 1000.0);
        assert_eq!(parse_rate("8kbit").unwrap(), 1000.0);
        assert_eq!(parse_rate("800bit").unwrap(), 100.0);
        assert_eq!(parse_rate("8Kibit").unwrap(), 1024.0);
    }

    #[test]
    fn nonsense_and_ambiguity_are_refused() {
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("").is_err());
        assert!(parse_rate("1e400").is_err());
        let e = parse_rate("10Mb").unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("10MB") && e.contains("10Mbit"),
            "{e}"
        );
    }

    #[test]
    fn bwlimit_is_whole_bytes_of_at_least_1k() {
        assert_eq!(parse_bwlimit("64K").unwrap(), 65536);
        assert_eq!(parse_bwlimit("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_bwlimit("1024").unwrap(), 1024);
        let e = parse_bwlimit("10").unwrap_err();
        assert_eq!(crate::exit_codes::Exit::of(&e), crate::exit_codes::Exit::Usage);
        let e = parse_bwlimit("lots").unwrap_err();
        assert_eq!(crate::exit_codes::Exit::of(&e), crate::exit_codes::Exit::Usage);
        assert!(e.to_string().contains("lots"), "{e}");
    }
}
