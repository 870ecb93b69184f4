//! Image names a peer may ask for: one plain file name, so the path it
//! designates can only be directly inside the daemon's data or export
//! directory. No separators, no `..`, no hidden files (cbt keeps its own
//! side files as hidden files next to each image).

/// Longest name accepted.
pub const MAX_NAME: usize = 255;

/// Checks a name from a peer; the reason for a refusal otherwise.
pub fn check_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("an image name is required (HOST:PORT/NAME)".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("image name longer than {MAX_NAME} bytes"));
    }
    if name.starts_with('.') {
        return Err(format!(
            "image name {name:?} must not start with '.' (no hidden files, no '..')"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@')))
    {
        return Err(format!(
            "image name {name:?} contains {c:?}: names are plain file names (letters, digits, '.', '_', '-', '+', '@')"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_paths_do_not() {
        for ok in ["vm1.img", "disk-2024_01.qcow2", "a", "x+y@z"] {
            assert_eq!(check_name(ok), Ok(ok));
        }
        for bad in [
            "", ".", "..", "../x", "/etc/x", "a/b", ".hidden", "a\\b", "x\0y", "spa ce", "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(256)).is_err());
    }
}
