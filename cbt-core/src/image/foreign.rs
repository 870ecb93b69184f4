//! Disk-image formats cbt does not read, recognised by their magic so they
//! are refused instead of being copied byte for byte as if they were raw
//! disks (a VMDK "copied" that way is a VMDK container, not the guest's
//! disk, and its blocks match nothing in the seeds).
//!
//! Detection looks at the first sector and, for fixed VHD images (raw data
//! followed by a 512-byte footer), at the last one. Every test is a fixed
//! magic at a fixed offset, so a raw disk can only be mistaken for one of
//! these formats if its first (or, with a valid footer checksum, last)
//! sector is exactly that format's header.

use std::path::Path;

/// Bytes of the start of a file that [`foreign_format`] looks at.
pub(crate) const HEAD_LEN: usize = 512;
/// Bytes of the end of a file that [`foreign_format`] looks at (a VHD footer).
pub(crate) const TAIL_LEN: usize = 512;

/// A recognised image format that cbt does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Foreign {
    /// The format's common name, for messages.
    pub name: &'static str,
    /// qemu's name for the format (`qemu-img convert -f NAME`).
    pub qemu: &'static str,
}

const VMDK: Foreign = Foreign {
    name: "VMDK",
    qemu: "vmdk",
};
const VHD: Foreign = Foreign {
    name: "VHD",
    qemu: "vpc",
};
const VHDX: Foreign = Foreign {
    name: "VHDX",
    qemu: "vhdx",
};
const VDI: Foreign = Foreign {
    name: "VDI (VirtualBox)",
    qemu: "vdi",
};
const QED: Foreign = Foreign {
    name: "QED",
    qemu: "qed",
};
const LUKS: Foreign = Foreign {
    name: "LUKS-encrypted",
    qemu: "luks",
};
const PARALLELS: Foreign = Foreign {
    name: "Parallels",
    qemu: "parallels",
};

/// Magics at offset 0.
const HEAD_MAGICS: &[(&[u8], Foreign)] = &[
    // Hosted sparse extent (VMDK4) and ESX sparse extent (VMDK3).
    (b"KDMV", VMDK),
    (b"COWD", VMDK),
    // A descriptor file: the data lives in extent files it names.
    (b"# Disk DescriptorFile", VMDK),
    (b"vhdxfile", VHDX),
    // A dynamic VHD starts with a copy of its footer.
    (b"conectix", VHD),
    (b"QED\0", QED),
    (b"LUKS\xba\xbe", LUKS),
    (b"WithoutFreeSpace", PARALLELS),
    (b"WithouFreSpacExt", PARALLELS),
];

/// VDI's signature, little-endian at offset 0x40 (after a free-text banner
/// whose wording changed with VirtualBox's owners).
const VDI_SIGNATURE: [u8; 4] = 0xbeda_107f_u32.to_le_bytes();
const VDI_SIGNATURE_AT: usize = 0x40;

/// The VHD footer's cookie and where its checksum lies.
const VHD_COOKIE: &[u8] = b"conectix";
const VHD_CHECKSUM_AT: usize = 64;

/// The foreign format `head` (the file's first bytes) and `tail` (its last
/// [`TAIL_LEN`] bytes, when the file is longer than both) show, if any.
pub(crate) fn foreign_format(head: &[u8], tail: Option<&[u8]>) -> Option<Foreign> {
    for (magic, format) in HEAD_MAGICS {
        if head.starts_with(magic) {
            return Some(*format);
        }
    }
    if head.get(VDI_SIGNATURE_AT..VDI_SIGNATURE_AT + 4) == Some(&VDI_SIGNATURE[..]) {
        return Some(VDI);
    }
    // A fixed VHD is raw data plus a footer; the checksum keeps a raw disk
    // whose last sector merely starts with the cookie from being refused.
    match tail {
        Some(t) if t.starts_with(VHD_COOKIE) && vhd_footer_checksum_ok(t) => Some(VHD),
        _ => None,
    }
}

/// The footer's checksum is the one's complement of the sum of its bytes,
/// the checksum field itself excluded.
fn vhd_footer_checksum_ok(footer: &[u8]) -> bool {
    let Some(field) = footer.get(VHD_CHECKSUM_AT..VHD_CHECKSUM_AT + 4) else {
        return false;
    };
    let stored = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(VHD_CHECKSUM_AT..VHD_CHECKSUM_AT + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum == stored
}

/// What the user can do about an image in format `f` at `path`.
pub(crate) fn hint(f: Foreign, path: &Path) -> String {
    let out = path.with_extension("qcow2");
    if f == LUKS {
        return format!(
            "cbt does not decrypt; convert it to an unencrypted image (qemu-img convert --object \
             secret,id=k,file=KEYFILE --image-opts driver=luks,key-secret=k,file.filename={} -O qcow2 {}) \
             or open it with cryptsetup and copy the mapped device",
            path.display(),
            out.display()
        );
    }
    format!(
        "cbt reads raw and qcow2 images; convert it first: qemu-img convert -f {} -O qcow2 {} {}",
        f.qemu,
        path.display(),
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector_with(at: usize, magic: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; HEAD_LEN];
        s[at..at + magic.len()].copy_from_slice(magic);
        s
    }

    /// A VHD footer with a correct checksum.
    fn vhd_footer() -> Vec<u8> {
        let mut f = sector_with(0, VHD_COOKIE);
        f[8..16].copy_from_slice(&[0, 0, 0, 2, 0, 1, 0, 0]);
        let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        f[VHD_CHECKSUM_AT..VHD_CHECKSUM_AT + 4].copy_from_slice(&(!sum).to_be_bytes());
        f
    }

    #[test]
    fn head_magics_are_recognised() {
        let cases: [(&[u8], &str); 9] = [
            (b"KDMV\x01\0\0\0", "vmdk"),
            (b"COWD", "vmdk"),
            (b"# Disk DescriptorFile\nversion=1\n", "vmdk"),
            (b"vhdxfile", "vhdx"),
            (b"conectix\0\0\0\x02", "vpc"),
            (b"QED\0", "qed"),
            (b"LUKS\xba\xbe\0\x02", "luks"),
            (b"WithoutFreeSpace", "parallels"),
            (b"WithouFreSpacExt", "parallels"),
        ];
        for (magic, qemu) in cases {
            let f = foreign_format(&sector_with(0, magic), None);
            assert_eq!(f.map(|f| f.qemu), Some(qemu), "{magic:?}");
        }
    }

    #[test]
    fn vdi_is_recognised_by_its_signature_not_its_banner() {
        let mut s = sector_with(0, b"<<< Some Future VirtualBox Disk Image >>>\n");
        assert_eq!(foreign_format(&s, None), None);
        s[VDI_SIGNATURE_AT..VDI_SIGNATURE_AT + 4].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(foreign_format(&s, None), Some(VDI));
    }

    #[test]
    fn fixed_vhd_needs_a_valid_footer() {
        let head = vec![0u8; HEAD_LEN];
        let footer = vhd_footer();
        assert_eq!(foreign_format(&head, Some(&footer)), Some(VHD));
        let mut broken = footer.clone();
        broken[20] ^= 1;
        assert_eq!(foreign_format(&head, Some(&broken)), None);
        assert_eq!(foreign_format(&head, Some(&footer[..40])), None);
    }

    #[test]
    fn raw_and_short_files_are_not_foreign() {
        let mut mbr = vec![0u8; HEAD_LEN];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(foreign_format(&mbr, Some(&mbr)), None);
        assert_eq!(foreign_format(b"KDM", None), None);
        assert_eq!(foreign_format(b"", None), None);
        // The magic must be at the start, not anywhere in the sector.
        assert_eq!(foreign_format(&sector_with(8, b"KDMV"), None), None);
    }

    #[test]
    fn hints_name_the_file_and_the_conversion() {
        let h = hint(VMDK, Path::new("/x/disk.vmdk"));
        assert!(
            h.contains("qemu-img convert -f vmdk -O qcow2 /x/disk.vmdk /x/disk.qcow2"),
            "{h}"
        );
        let h = hint(LUKS, Path::new("enc.img"));
        assert!(h.contains("does not decrypt") && h.contains("enc.img"), "{h}");
    }
}
