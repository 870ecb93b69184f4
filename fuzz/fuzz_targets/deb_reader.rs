//! Fuzzes the `.deb` reader (ar container, compressed tar members, the
//! control file) with small limits.
//!
//! Each input is read as a whole `.deb`, and also wrapped in a valid ar
//! container as an uncompressed `data.tar` and as a `control.tar`, so the
//! fuzzer reaches the tar and control parsers without having to discover
//! the ar format first. Besides "no panic", the target checks that the
//! reader hands out exactly the bytes it declares, stays within the
//! limits, and that every error names the archive.
#![no_main]

use std::path::Path;

use cbt_teleport::{read_deb, DebLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: DebLimits = DebLimits {
    max_members: 8,
    max_entries: 4096,
    max_data_bytes: 16 << 20,
    max_control_bytes: 64 << 10,
};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&ar(&[(b"debian-binary", b"2.0\n"), (b"data.tar", data)]));
    check(&ar(&[
        (b"debian-binary", b"2.0\n"),
        (b"control.tar", data),
        (b"data.tar", b""),
    ]));
});

fn check(deb: &[u8]) {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut buf = [0u8; 4096];
    let result = read_deb(deb, Path::new("fuzz.deb"), &LIMITS, &mut |_, size, r| {
        let mut got = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => return Err(cbt_core::Error::malformed("fuzz.deb", e.to_string())),
            }
        }
        assert!(got <= size, "read {got} bytes of a {size}-byte file");
        files += 1;
        bytes += got;
        Ok(())
    });
    match result {
        Ok(info) => {
            assert_eq!(info.files, files);
            assert_eq!(info.data_bytes, bytes);
            assert!(bytes <= LIMITS.max_data_bytes);
        }
        Err(e) => assert!(
            e.to_string().starts_with("fuzz.deb"),
            "error does not name the archive: {e}"
        ),
    }
}

/// A valid ar archive of `members`.
fn ar(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let mut header = [b' '; 60];
        header[..name.len()].copy_from_slice(name);
        let size = data.len().to_string();
        header[48..48 + size.len()].copy_from_slice(size.as_bytes());
        header[58..60].copy_from_slice(b"`\n");
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}
