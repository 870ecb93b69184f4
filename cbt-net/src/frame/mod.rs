//! The frame codec: the preamble every connection starts with, and the
//! length-prefixed frames that follow it.
//!
//! ```text
//! preamble: magic "CBTNET\r\n" (8) | version u16 | reserved u16        (12 bytes, once per direction)
//! frame:    length u32 | type u8 | payload (length bytes)              (big-endian integers)
//! ```
//!
//! The decoder is written for bytes from an untrusted peer: it checks the
//! header (length against [`MAX_PAYLOAD`], known type) before it waits for
//! or allocates anything, treats a short buffer as the normal
//! [`Decoded::Incomplete`] state, and parses every payload strictly (every
//! count checked against the bytes actually present, no trailing bytes).
//! It never panics, whatever the input; `fuzz/fuzz_targets/frame_decoder.rs`
//! exercises exactly that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cbt_core::{Digest, Region};

/// First bytes of every connection, in both directions.
pub const MAGIC: [u8; 8] = *b"CBTNET\r\n";
/// Protocol version spoken by this implementation.
pub const VERSION: u16 = 5;
/// Bytes of the preamble: magic, version, reserved.
pub const PREAMBLE_LEN: usize = 12;
/// Bytes of a frame header: payload length and type.
pub const HEADER_LEN: usize = 5;
/// Largest payload accepted or sent (2 MiB): room for one 1 MiB block,
/// with a wide margin, and small enough that a peer cannot make us
/// allocate much.
pub const MAX_PAYLOAD: usize = 2 << 20;
/// Longest string (name, label, error message) in a frame.
pub const MAX_STRING: usize = 4096;
/// Most blocks in one group.
pub const MAX_GROUP_BLOCKS: usize = 1024;
/// Length of nonces and proofs in the handshake.
pub const NONCE_LEN: usize = 32;
/// Most block ranges one BLOCKS frame may carry.
pub const MAX_PIECE_RANGES: usize = 4096;

/// What the connecting side wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The client sends an image; the server receives it.
    Push = 1,
    /// The client receives an image the server exports.
    Pull = 2,
    /// A push that asks the daemon to update the existing image of that
    /// name in place (writing only the blocks that differ).
    PushInPlace = 3,
    /// A pull whose sender first describes the guest (DESCRIBE), so that
    /// the client can take its packages from a mirror near it.
    PullTeleport = 4,
    /// A teleport pull's dry run: the sender describes, the client plans,
    /// nothing is transferred.
    PullTeleportPlan = 5,
    /// A push that may replace an existing image of that name (`cbt send
    /// --force`); a plain push to an existing name is refused unless the
    /// daemon allows overwriting.
    PushReplace = 6,
    /// A functional pull: the sender describes the guest and sends its
    /// user data (a pack image made by its [`crate::Teleporter`]) instead
    /// of the image; the client rebuilds the rest from its own images
    /// and packages.
    PullFunctional = 7,
}

impl Mode {
    /// True for the modes in which the client receives.
    pub fn is_pull(self) -> bool {
        matches!(
            self,
            Mode::Pull | Mode::PullTeleport | Mode::PullTeleportPlan | Mode::PullFunctional
        )
    }
}

/// One entry of the group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEntry {
    /// The next group holds data; its group digest (BLAKE3 over the
    /// digests of its blocks).
    Data(Digest),
    /// The next `n` groups are entirely zero.
    Zeros(u64),
}

/// How a block's bytes are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As they are.
    Raw = 0,
    /// Compressed with zstd, one frame per block.
    Zstd = 1,
    /// The next piece of the connection's zstd stream (see `compress`).
    ZstdStream = 2,
}

/// A run of consecutive block indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    /// First block index.
    pub first: u64,
    /// Number of blocks (at least 1).
    pub count: u32,
}

/// What the sender announces before the group stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Image size in bytes.
    pub image_len: u64,
    /// Block size of the layout.
    pub block_size: u32,
    /// Blocks per group.
    pub group_blocks: u16,
    /// The layout's regions (see [`cbt_core::Layout::from_regions`]).
    pub regions: Vec<Region>,
    /// A name of the source for messages.
    pub label: String,
    /// log2 of the compression window the sender would like (0: it will
    /// not compress); the receiver grants at most its own limit in READY.
    pub window_log: u8,
}

/// The receiver's totals, sent to the sender when the image is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DoneStats {
    /// All-zero blocks.
    pub blocks_zero: u64,
    /// Blocks found at the receiver.
    pub blocks_local: u64,
    /// Blocks that crossed the network.
    pub blocks_sent: u64,
    /// Blocks fixed after verification.
    pub blocks_repaired: u64,
}

/// What a TELEPORT frame reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeleportStage {
    /// The guest's packages resolved against the receiver's package
    /// sources: the plan, before anything is fetched.
    Planned = 1,
    /// Fetching is over: the seeds are ready (or the receiver decided
    /// against fetching).
    Prepared = 2,
    /// The transfer is verified: where its blocks came from (just before DONE).
    Finished = 3,
}

/// A protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server: what it wants, and its nonce.
    Hello {
        /// Push or pull.
        mode: Mode,
        /// The image's name at the daemon (empty for a one-shot receiver).
        name: String,
        /// Fresh random bytes for the server's proof.
        nonce: [u8; NONCE_LEN],
    },
    /// Server → client: its nonce and whether it requires the secret.
    Challenge {
        /// Fresh random bytes for the client's proof.
        nonce: [u8; NONCE_LEN],
        /// True when the server has a secret configured.
        auth: bool,
    },
    /// Client → server: proof of the secret (absent without one).
    Auth {
        /// `keyed_hash(key, "client" ‖ nonces ‖ request)`.
        proof: Option<[u8; NONCE_LEN]>,
    },
    /// Server → client: the request is accepted, with the server's proof.
    Accept {
        /// `keyed_hash(key, "server" ‖ nonces ‖ request)`.
        proof: Option<[u8; NONCE_LEN]>,
    },
    /// Either way: a fatal error; the connection closes after it.
    Error {
        /// What went wrong, for people.
        message: String,
    },
    /// Either way: nothing to say, but still alive.
    Keepalive,
    /// Sender → receiver: the image's size and layout.
    Begin(Begin),
    /// Receiver → sender: index built, output created; send groups.
    Ready {
        /// Data groups the sender may have in flight beyond the credit.
        window: u32,
        /// log2 of the compression window granted: at most the BEGIN's,
        /// and what the receiver's decoder will accept.
        window_log: u8,
    },
    /// Sender → receiver: the next entries of the group stream.
    Groups {
        /// Entries in order.
        entries: Vec<GroupEntry>,
    },
    /// Sender → receiver: the group stream is complete.
    End {
        /// Digest of the whole image ([`cbt_core::ImageDigester`]).
        image_digest: Digest,
        /// Number of groups in the image.
        groups: u64,
    },
    /// Receiver → sender: send the block digests of these groups.
    NeedDigests {
        /// Group indices.
        groups: Vec<u64>,
    },
    /// Sender → receiver: the block digests of one group.
    Digests {
        /// Group index.
        group: u64,
        /// One digest per block (zero blocks: the digest of their zeros).
        digests: Vec<Digest>,
    },
    /// Receiver → sender: send the block keys of these groups (the first
    /// 8 bytes of each block digest: enough to find a block in the index;
    /// the group digest proves the blocks found).
    NeedKeys {
        /// Group indices.
        groups: Vec<u64>,
    },
    /// Sender → receiver: the block keys of one group.
    Keys {
        /// Group index.
        group: u64,
        /// One key per block ([`Digest::short`]).
        keys: Vec<u64>,
    },
    /// Receiver → sender: send these blocks.
    NeedBlocks {
        /// Runs of block indices.
        ranges: Vec<BlockRange>,
    },
    /// Sender → receiver: the content of the blocks of `ranges`, in order,
    /// as one piece (see `compress`).
    Blocks {
        /// The blocks carried.
        ranges: Vec<BlockRange>,
        /// How `data` is encoded.
        encoding: Encoding,
        /// The (possibly compressed) bytes of all of them.
        data: Bytes,
    },
    /// Receiver → sender: this many data groups are complete, in order.
    Credit {
        /// Data groups completed (a prefix of the data groups sent).
        completed: u64,
    },
    /// Receiver → sender: the image verified and was published.
    Done(DoneStats),
    /// Sender → receiver, before BEGIN: a description of the guest in the
    /// image (its distribution and exact packages; JSON, see
    /// `docs/PROTOCOL.md`), so that the receiver can take them from its
    /// package sources. With `dry_run`, the receiver only plans and the
    /// sender closes after the plan.
    Describe {
        /// Plan only.
        dry_run: bool,
        /// The description (JSON).
        body: Bytes,
    },
    /// Receiver → sender, after DESCRIBE: what the receiver made of it
    /// (JSON, for people and reports; nothing in the transfer depends on it).
    Teleport {
        /// Which report this is.
        stage: TeleportStage,
        /// The report (JSON).
        body: Bytes,
    },
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const AUTH: u8 = 0x03;
    pub const ACCEPT: u8 = 0x04;
    pub const ERROR: u8 = 0x05;
    pub const KEEPALIVE: u8 = 0x06;
    pub const BEGIN: u8 = 0x10;
    pub const READY: u8 = 0x11;
    pub const GROUPS: u8 = 0x12;
    pub const END: u8 = 0x13;
    pub const NEED_DIGESTS: u8 = 0x14;
    pub const DIGESTS: u8 = 0x15;
    pub const NEED_BLOCKS: u8 = 0x16;
    pub const BLOCK: u8 = 0x17;
    pub const CREDIT: u8 = 0x18;
    pub const DONE: u8 = 0x19;
    pub const NEED_KEYS: u8 = 0x1a;
    pub const KEYS: u8 = 0x1b;
    pub const DESCRIBE: u8 = 0x20;
    pub const TELEPORT: u8 = 0x21;
}

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a payload larger than [`MAX_PAYLOAD`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Announced payload length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The type byte is not one this version knows.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload does not parse as its type requires.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The preamble is not cbt's.
    #[error("not a cbt peer (bad magic)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this is version {VERSION}")]
    Version(u16),
}

/// The result of trying to decode one frame from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, removed from the buffer.
    Frame(Frame),
    /// More bytes are needed; at least this many in total (header included).
    Incomplete(usize),
}

/// The preamble this side sends.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..10].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// Checks a peer's preamble.
pub fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(), FrameError> {
    if p[..8] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = u16::from_be_bytes([p[8], p[9]]);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    Ok(())
}

fn type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        ty::HELLO => "HELLO",
        ty::CHALLENGE => "CHALLENGE",
        ty::AUTH => "AUTH",
        ty::ACCEPT => "ACCEPT",
        ty::ERROR => "ERROR",
        ty::KEEPALIVE => "KEEPALIVE",
        ty::BEGIN => "BEGIN",
        ty::READY => "READY",
        ty::GROUPS => "GROUPS",
        ty::END => "END",
        ty::NEED_DIGESTS => "NEED_DIGESTS",
        ty::DIGESTS => "DIGESTS",
        ty::NEED_KEYS => "NEED_KEYS",
        ty::KEYS => "KEYS",
        ty::NEED_BLOCKS => "NEED_BLOCKS",
        ty::BLOCK => "BLOCK",
        ty::CREDIT => "CREDIT",
        ty::DONE => "DONE",
        ty::DESCRIBE => "DESCRIBE",
        ty::TELEPORT => "TELEPORT",
        _ => return None,
    })
}

/// Checks the header at the start of `buf` without consuming anything:
/// the frame's total length (header included) once the header is there.
/// An oversized or unknown frame is an error as soon as its header arrives,
/// before any of its payload is awaited.
pub fn check_header(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::Oversized {
            len: u64::from(len),
            max: MAX_PAYLOAD,
        });
    }
    if type_name(buf[4]).is_none() {
        return Err(FrameError::UnknownType(buf[4]));
    }
    Ok(Some(HEADER_LEN + len as usize))
}

/// Decodes one frame from the front of `buf`, removing it on success.
/// Incomplete input leaves `buf` untouched.
pub fn decode(buf: &mut BytesMut) -> Result<Decoded, FrameError> {
    let Some(total) = check_header(buf)? else {
        return Ok(Decoded::Incomplete(HEADER_LEN));
    };
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total));
    }
    let t = buf[4];
    let mut frame = buf.split_to(total).freeze();
    frame.advance(HEADER_LEN);
    parse(t, frame).map(Decoded::Frame)
}

impl Frame {
    /// The frame type's name, for messages.
    pub fn name(&self) -> &'static str {
        type_name(self.type_byte()).unwrap_or("?")
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => ty::HELLO,
            Frame::Challenge { .. } => ty::CHALLENGE,
            Frame::Auth { .. } => ty::AUTH,
            Frame::Accept { .. } => ty::ACCEPT,
            Frame::Error { .. } => ty::ERROR,
            Frame::Keepalive => ty::KEEPALIVE,
            Frame::Begin(_) => ty::BEGIN,
            Frame::Ready { .. } => ty::READY,
            Frame::Groups { .. } => ty::GROUPS,
            Frame::End { .. } => ty::END,
            Frame::NeedDigests { .. } => ty::NEED_DIGESTS,
            Frame::Digests { .. } => ty::DIGESTS,
            Frame::NeedKeys { .. } => ty::NEED_KEYS,
            Frame::Keys { .. } => ty::KEYS,
            Frame::NeedBlocks { .. } => ty::NEED_BLOCKS,
            Frame::Blocks { .. } => ty::BLOCK,
            Frame::Credit { .. } => ty::CREDIT,
            Frame::Done(_) => ty::DONE,
            Frame::Describe { .. } => ty::DESCRIBE,
            Frame::Teleport { .. } => ty::TELEPORT,
        }
    }

    /// Appends the encoded frame to `dst`. Fails (leaving `dst` as it was)
    /// if the payload would exceed [`MAX_PAYLOAD`] or a string [`MAX_STRING`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(self.type_byte());
        let result = self.encode_payload(dst);
        let len = dst.len() - start - HEADER_LEN;
        if let Err(e) = result {
            dst.truncate(start);
            return Err(e);
        }
        if len > MAX_PAYLOAD {
            dst.truncate(start);
            return Err(FrameError::Oversized {
                len: len as u64,
                max: MAX_PAYLOAD,
            });
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let name = self.name();
        let put_string = |dst: &mut BytesMut, s: &str| {
            if s.len() > MAX_STRING {
                return Err(FrameError::Malformed {
                    frame: name,
                    reason: "string too long",
                });
            }
            dst.put_u16(s.len() as u16);
            dst.put_slice(s.as_bytes());
            Ok(())
        };
        let put_opt = |dst: &mut BytesMut, a: &Option<[u8; 32]>| match a {
            Some(a) => {
                dst.put_u8(1);
                dst.put_slice(a);
            }
            None => dst.put_u8(0),
        };
        match self {
            Frame::Hello { mode, name, nonce } => {
                dst.put_u8(*mode as u8);
                put_string(dst, name)?;
                dst.put_slice(nonce);
            }
            Frame::Challenge { nonce, auth } => {
                dst.put_slice(nonce);
                dst.put_u8(u8::from(*auth));
            }
            Frame::Auth { proof } | Frame::Accept { proof } => put_opt(dst, proof),
            Frame::Error { message } => {
                // Messages are for people: cut rather than fail.
                let mut end = message.len().min(MAX_STRING);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                put_string(dst, &message[..end])?;
            }
            Frame::Keepalive => {}
            Frame::Begin(b) => {
                dst.put_u64(b.image_len);
                dst.put_u32(b.block_size);
                dst.put_u16(b.group_blocks);
                dst.put_u32(b.regions.len() as u32);
                for r in &b.regions {
                    dst.put_u64(r.start);
                    dst.put_u64(r.end);
                    dst.put_u64(r.base);
                }
                put_string(dst, &b.label)?;
                dst.put_u8(b.window_log);
            }
            Frame::Ready { window, window_log } => {
                dst.put_u32(*window);
                dst.put_u8(*window_log);
            }
            Frame::Groups { entries } => {
                for e in entries {
                    match e {
                        GroupEntry::Data(d) => {
                            dst.put_u8(0);
                            dst.put_slice(&d.0);
                        }
                        GroupEntry::Zeros(n) => {
                            dst.put_u8(1);
                            dst.put_u64(*n);
                        }
                    }
                }
            }
            Frame::End { image_digest, groups } => {
                dst.put_slice(&image_digest.0);
                dst.put_u64(*groups);
            }
            Frame::NeedDigests { groups } | Frame::NeedKeys { groups } => {
                groups.iter().for_each(|g| dst.put_u64(*g))
            }
            Frame::Keys { group, keys } => {
                dst.put_u64(*group);
                keys.iter().for_each(|k| dst.put_u64(*k));
            }
            Frame::Digests { group, digests } => {
                dst.put_u64(*group);
                digests.iter().for_each(|d| dst.put_slice(&d.0));
            }
            Frame::NeedBlocks { ranges } => ranges.iter().for_each(|r| {
                dst.put_u64(r.first);
                dst.put_u32(r.count);
            }),
            Frame::Blocks {
                ranges,
                encoding,
                data,
            } => {
                if ranges.is_empty() || ranges.len() > MAX_PIECE_RANGES {
                    return Err(FrameError::Malformed {
                        frame: "BLOCK",
                        reason: "range count out of bounds",
                    });
                }
                dst.put_u16(ranges.len() as u16);
                for r in ranges {
                    dst.put_u64(r.first);
                    dst.put_u32(r.count);
                }
                dst.put_u8(*encoding as u8);
                dst.put_slice(data);
            }
            Frame::Credit { completed } => dst.put_u64(*completed),
            Frame::Done(s) => {
                dst.put_u64(s.blocks_zero);
                dst.put_u64(s.blocks_local);
                dst.put_u64(s.blocks_sent);
                dst.put_u64(s.blocks_repaired);
            }
            Frame::Describe { dry_run, body } => {
                dst.put_u8(u8::from(*dry_run));
                dst.put_slice(body);
            }
            Frame::Teleport { stage, body } => {
                dst.put_u8(*stage as u8);
                dst.put_slice(body);
            }
        }
        Ok(())
    }
}

mod parse;

use parse::parse;

#[cfg(test)]
mod tests;
