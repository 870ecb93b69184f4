//! Fuzz target: the network frame decoder must never panic, never loop,
//! and never allocate beyond the frame limit, whatever a peer sends.
//! Decoded frames must survive re-encoding unchanged, and the piece a
//! BLOCKS frame carries, fed to one connection's decompressor in order, must
//! decode to exactly the length its blocks claim or be an error.
#![no_main]

use bytes::BytesMut;
use cbt_net::compress::{Decompressor, LONG_WINDOW_LOG};
use cbt_net::frame::{decode, Decoded, Frame, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut decompressor = Decompressor::new(LONG_WINDOW_LOG).expect("decompressor");
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match decode(&mut buf) {
            Ok(Decoded::Frame(frame)) => {
                assert!(buf.len() < before, "a frame must consume bytes");
                let mut again = BytesMut::new();
                frame.encode(&mut again).expect("a decoded frame re-encodes");
                assert!(again.len() <= 5 + MAX_PAYLOAD);
                match decode(&mut again) {
                    Ok(Decoded::Frame(f)) => assert_eq!(f, frame),
                    other => panic!("re-encoded frame does not decode: {other:?}"),
                }
                if let Frame::Blocks { ranges, encoding, data } = &frame {
                    // 4 KiB blocks, bounded as a receiver bounds a piece.
                    let blocks: u64 = ranges.iter().map(|r| u64::from(r.count)).sum();
                    let len = (blocks.min(256) * 4096) as usize;
                    if let Ok(plain) = decompressor.decode(*encoding, data, len, &mut out) {
                        assert_eq!(plain.len(), len);
                    }
                }
            }
            Ok(Decoded::Incomplete(n)) => {
                assert!(n > buf.len() && n <= 5 + MAX_PAYLOAD);
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
});
