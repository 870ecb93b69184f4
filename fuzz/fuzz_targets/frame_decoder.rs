//! Fuzz target: the network frame decoder must never panic, never loop,
//! and never allocate beyond the frame limit, whatever a peer sends.
//! Decoded frames must survive re-encoding unchanged.
#![no_main]

use bytes::BytesMut;
use cbt_net::frame::{decode, Decoded, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
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
