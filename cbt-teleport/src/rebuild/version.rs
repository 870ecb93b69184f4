//! Debian version ordering (`deb-version(7)`): `[epoch:]upstream[-revision]`,
//! compared part by part, each part alternately as non-digits (letters
//! before non-letters, `~` before everything, even the end) and digits
//! (numerically). Used to pick the nearest version a mirror has when the
//! guest's exact one is gone.

use std::cmp::Ordering;

/// Compares two Debian versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// (epoch, upstream, revision). A missing or unreadable epoch is 0.
fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// The sort weight of a non-digit character: `~` lowest, then the end of
/// the string, then letters, then everything else.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefixes, character by character.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            match weight(ca).cmp(&weight(cb)) {
                Ordering::Equal => {}
                other => return other,
            }
            if ca.is_some() {
                a = &a[1..];
            }
            if cb.is_some() {
                b = &b[1..];
            }
        }
        // Digit runs, numerically (leading zeros ignored, any length).
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = trim_zeros(&a[..da]);
        let nb = trim_zeros(&b[..db]);
        match na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)) {
            Ordering::Equal => {}
            other => return other,
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let zeros = d.iter().take_while(|&&c| c == b'0').count();
    &d[zeros..]
}

/// The version to install when `wanted` is not available: the oldest
/// available one at least as new (the smallest step forward, with its
/// fixes), else the newest older one.
pub fn nearest<'a>(wanted: &str, available: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut newer: Option<&str> = None;
    let mut older: Option<&str> = None;
    for v in available {
        if compare(v, wanted) != Ordering::Less {
            if newer.is_none_or(|n| compare(v, n) == Ordering::Less) {
                newer = Some(v);
            }
        } else if older.is_none_or(|o| compare(v, o) == Ordering::Greater) {
            older = Some(v);
        }
    }
    newer.or(older)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_dpkg() {
        // Pairs from dpkg's own test suite and Debian policy.
        let less = [
            ("1.0", "1.1"),
            ("1.0~rc1", "1.0"),
            ("1.0~~", "1.0~"),
            ("1.0-1", "1.0-2"),
            ("1.0-1", "1:0.9"),
            ("2.30-21+deb12u1", "2.30-21+deb12u2"),
            ("1.2.3", "1.2.10"),
            ("1.0a", "1.0b"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("0:1.0", "1.1"),
            ("1.18.0-6+deb11u3", "1.22.1-9"),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12"),
        ];
        for (a, b) in less {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        for (a, b) in [
            ("1.0", "1.0"),
            ("0:1.0", "1.0"),
            ("1.01", "1.1"),
            ("1.0-0", "1.0-00"),
        ] {
            assert_eq!(compare(a, b), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn nearest_prefers_the_smallest_newer_version() {
        let have = ["1.0-1", "1.2-1", "1.1-3", "0.9-1"];
        assert_eq!(nearest("1.1-1", have), Some("1.1-3"));
        assert_eq!(nearest("2.0", have), Some("1.2-1"));
        assert_eq!(nearest("0.1", have), Some("0.9-1"));
        assert_eq!(nearest("1.0-1", have), Some("1.0-1"));
        assert_eq!(nearest("1.0", []), None);
    }
}
