use super::*;

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            mode: Mode::Push,
            name: "vm1.img".into(),
            nonce: [7; 32],
        },
        Frame::Hello {
            mode: Mode::PushReplace,
            name: "vm1.img".into(),
            nonce: [8; 32],
        },
        Frame::Challenge {
            nonce: [9; 32],
            auth: true,
        },
        Frame::Auth { proof: Some([1; 32]) },
        Frame::Auth { proof: None },
        Frame::Accept { proof: None },
        Frame::Error {
            message: "no such image".into(),
        },
        Frame::Keepalive,
        Frame::Begin(Begin {
            image_len: 1 << 30,
            block_size: 4096,
            group_blocks: 64,
            regions: vec![
                Region {
                    start: 0,
                    end: 1 << 20,
                    base: 0,
                },
                Region {
                    start: 1 << 20,
                    end: 1 << 30,
                    base: 1 << 20,
                },
            ],
            label: "disk.qcow2".into(),
            window_log: 27,
        }),
        Frame::Ready {
            window: 512,
            window_log: 23,
        },
        Frame::Groups {
            entries: vec![GroupEntry::Data(Digest([3; 32])), GroupEntry::Zeros(1_000_000)],
        },
        Frame::End {
            image_digest: Digest([4; 32]),
            groups: 17,
        },
        Frame::NeedDigests {
            groups: vec![1, 5, 9],
        },
        Frame::Digests {
            group: 5,
            digests: vec![Digest([5; 32]); 64],
        },
        Frame::NeedKeys { groups: vec![2, 7] },
        Frame::Keys {
            group: 7,
            keys: vec![u64::MAX, 0, 42],
        },
        Frame::NeedBlocks {
            ranges: vec![BlockRange { first: 10, count: 3 }],
        },
        Frame::Blocks {
            ranges: vec![BlockRange { first: 42, count: 1 }],
            encoding: Encoding::Zstd,
            data: Bytes::from_static(b"abc"),
        },
        Frame::Blocks {
            ranges: vec![
                BlockRange { first: 7, count: 3 },
                BlockRange { first: 90, count: 64 },
            ],
            encoding: Encoding::ZstdStream,
            data: Bytes::from_static(b"xyz"),
        },
        Frame::Credit { completed: 99 },
        Frame::Done(DoneStats {
            blocks_zero: 1,
            blocks_local: 2,
            blocks_sent: 3,
            blocks_repaired: 0,
        }),
        Frame::Hello {
            mode: Mode::PullTeleport,
            name: "web.raw".into(),
            nonce: [1; 32],
        },
        Frame::Describe {
            dry_run: true,
            body: Bytes::from_static(b"{\"packages\":[]}"),
        },
        Frame::Describe {
            dry_run: false,
            body: Bytes::new(),
        },
        Frame::Teleport {
            stage: TeleportStage::Planned,
            body: Bytes::from_static(b"{}"),
        },
        Frame::Teleport {
            stage: TeleportStage::Prepared,
            body: Bytes::from_static(b"{\"fetched\":3}"),
        },
    ]
}

#[test]
fn teleport_frames_reject_unknown_flags_and_stages() {
    for (t, payload) in [
        (ty::DESCRIBE, &[2u8, b'{'][..]),
        (ty::TELEPORT, &[0u8][..]),
        (ty::TELEPORT, &[4u8][..]),
    ] {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_u8(t);
        buf.put_slice(payload);
        assert!(
            matches!(decode(&mut buf), Err(FrameError::Malformed { .. })),
            "{t:#x} {payload:?}"
        );
    }
}

#[test]
fn round_trip_every_frame_type() {
    let mut buf = BytesMut::new();
    for f in samples() {
        f.encode(&mut buf).unwrap();
    }
    for want in samples() {
        match decode(&mut buf).unwrap() {
            Decoded::Frame(got) => assert_eq!(got, want),
            Decoded::Incomplete(_) => panic!("incomplete"),
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn every_prefix_is_incomplete_and_leaves_the_buffer_alone() {
    for f in samples() {
        let mut whole = BytesMut::new();
        f.encode(&mut whole).unwrap();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            match decode(&mut part) {
                Ok(Decoded::Incomplete(n)) => assert!(n > cut),
                other => panic!("{} cut at {cut}: {other:?}", f.name()),
            }
            assert_eq!(part.len(), cut);
        }
    }
}

#[test]
fn oversized_is_refused_from_the_header_alone() {
    let mut buf = BytesMut::new();
    buf.put_u32(MAX_PAYLOAD as u32 + 1);
    buf.put_u8(ty::BLOCK);
    assert!(matches!(decode(&mut buf), Err(FrameError::Oversized { .. })));
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, ty::BLOCK][..]);
    assert!(matches!(decode(&mut buf), Err(FrameError::Oversized { .. })));
}

#[test]
fn unknown_type_is_an_error() {
    let mut buf = BytesMut::from(&[0, 0, 0, 0, 0x7f][..]);
    assert_eq!(decode(&mut buf), Err(FrameError::UnknownType(0x7f)));
}

#[test]
fn malformed_payloads_are_errors() {
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (ty::HELLO, vec![3]),                                          // unknown mode
        (ty::HELLO, vec![1, 0xff, 0xff]),                              // string longer than the limit
        (ty::CHALLENGE, vec![0; 33].into_iter().chain([2]).collect()), // bad flag
        (ty::KEEPALIVE, vec![0]),                                      // trailing byte
        (ty::GROUPS, vec![]),                                          // no entries
        (ty::GROUPS, vec![1, 0, 0, 0, 0, 0, 0, 0, 0]),                 // empty zero run
        (ty::GROUPS, vec![2]),                                         // unknown entry
        (ty::NEED_DIGESTS, vec![0; 7]),
        (ty::DIGESTS, vec![0; 8 + 31]),
        (ty::NEED_KEYS, vec![]),
        (ty::KEYS, vec![0; 8]),            // no keys
        (ty::KEYS, vec![0; 8 + 8 * 1025]), // more keys than a group has blocks
        (ty::NEED_BLOCKS, vec![0; 12]),    // zero count
        (ty::BLOCK, vec![0; 3]),           // no ranges
        (
            ty::BLOCK,
            [0, 1].into_iter().chain([0; 12]).chain([0, 1]).collect(),
        ), // zero count
        (
            ty::BLOCK,
            [0, 1].into_iter().chain([0; 11]).chain([1, 0]).collect(),
        ), // no data
        (
            ty::BLOCK,
            [0, 1].into_iter().chain([0; 11]).chain([1, 9, 1]).collect(),
        ), // unknown encoding
        (
            ty::BLOCK,
            [0x10, 1].into_iter().chain([0; 11]).chain([1, 0, 1]).collect(),
        ), // too many ranges
        // BEGIN claiming a billion regions in a small payload.
        (ty::BEGIN, [&[0u8; 12][..], &[0, 64], &[0x40, 0, 0, 0]].concat()),
    ];
    for (t, payload) in cases {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_u8(t);
        buf.put_slice(&payload);
        assert!(
            matches!(decode(&mut buf), Err(FrameError::Malformed { .. })),
            "type {t:#x} {payload:?}"
        );
    }
}

#[test]
fn preamble_checks_magic_and_version() {
    assert!(check_preamble(&preamble()).is_ok());
    let mut p = preamble();
    p[0] = b'X';
    assert_eq!(check_preamble(&p), Err(FrameError::BadMagic));
    let mut p = preamble();
    p[9] = 1;
    assert_eq!(check_preamble(&p), Err(FrameError::Version(1)));
}

#[test]
fn encoder_refuses_oversized_payloads() {
    let mut buf = BytesMut::new();
    let f = Frame::Blocks {
        ranges: vec![BlockRange { first: 0, count: 1 }],
        encoding: Encoding::Raw,
        data: Bytes::from(vec![1u8; MAX_PAYLOAD]),
    };
    assert!(f.encode(&mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn garbage_never_panics() {
    // A cheap, deterministic stand-in for the fuzz target.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        let n = (x % 64) as usize;
        let mut bytes = Vec::with_capacity(n + 5);
        for _ in 0..n + 5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        // Keep lengths small and types plausible so parsing is reached.
        bytes[0] = 0;
        bytes[1] = 0;
        bytes[2] = 0;
        bytes[3] = (n as u8).min(bytes[3]);
        bytes[4] = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
        ][bytes[4] as usize % 16];
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Decoded::Frame(_)) = decode(&mut buf) {}
    }
}
