//! Parsing a frame's payload: a strict reader (every count checked
//! against the bytes present, no trailing bytes) and one arm per type.

use bytes::{Buf, Bytes};
use cbt_core::{Digest, Region};

use super::*;

/// A strict reader over one payload.
struct Payload {
    frame: &'static str,
    bytes: Bytes,
}

impl Payload {
    fn err(&self, reason: &'static str) -> FrameError {
        FrameError::Malformed {
            frame: self.frame,
            reason,
        }
    }

    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.bytes.remaining() < n {
            Err(self.err("truncated"))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.bytes.get_u64())
    }

    fn array(&mut self) -> Result<[u8; 32], FrameError> {
        self.need(32)?;
        let mut a = [0u8; 32];
        self.bytes.copy_to_slice(&mut a);
        Ok(a)
    }

    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("flag is neither 0 nor 1")),
        }
    }

    fn opt_array(&mut self) -> Result<Option<[u8; 32]>, FrameError> {
        if self.bool()? {
            Ok(Some(self.array()?))
        } else {
            Ok(None)
        }
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let len = self.u16()? as usize;
        if len > MAX_STRING {
            return Err(self.err("string too long"));
        }
        self.need(len)?;
        let raw = self.bytes.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn rest(&mut self) -> Bytes {
        self.bytes.split_off(0)
    }

    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.bytes.has_remaining() {
            Err(self.err("trailing bytes"))
        } else {
            Ok(())
        }
    }
}

pub(super) fn parse(t: u8, bytes: Bytes) -> Result<Frame, FrameError> {
    let frame = type_name(t).ok_or(FrameError::UnknownType(t))?;
    let mut p = Payload { frame, bytes };
    let f = match t {
        ty::HELLO => {
            let mode = match p.u8()? {
                1 => Mode::Push,
                2 => Mode::Pull,
                3 => Mode::PushInPlace,
                4 => Mode::PullTeleport,
                5 => Mode::PullTeleportPlan,
                6 => Mode::PushReplace,
                7 => Mode::PullFunctional,
                _ => return Err(p.err("unknown mode")),
            };
            let name = p.string()?;
            let nonce = p.array()?;
            Frame::Hello { mode, name, nonce }
        }
        ty::CHALLENGE => {
            let nonce = p.array()?;
            let auth = p.bool()?;
            Frame::Challenge { nonce, auth }
        }
        ty::AUTH => Frame::Auth {
            proof: p.opt_array()?,
        },
        ty::ACCEPT => Frame::Accept {
            proof: p.opt_array()?,
        },
        ty::ERROR => Frame::Error { message: p.string()? },
        ty::KEEPALIVE => Frame::Keepalive,
        ty::BEGIN => {
            let image_len = p.u64()?;
            let block_size = p.u32()?;
            let group_blocks = p.u16()?;
            if group_blocks == 0 || group_blocks as usize > MAX_GROUP_BLOCKS {
                return Err(p.err("group size out of range"));
            }
            let count = p.u32()? as usize;
            if count.checked_mul(24).is_none_or(|n| n > p.remaining()) {
                return Err(p.err("region count exceeds the payload"));
            }
            let mut regions = Vec::with_capacity(count);
            for _ in 0..count {
                regions.push(Region {
                    start: p.u64()?,
                    end: p.u64()?,
                    base: p.u64()?,
                });
            }
            let label = p.string()?;
            let window_log = p.u8()?;
            Frame::Begin(Begin {
                image_len,
                block_size,
                group_blocks,
                regions,
                label,
                window_log,
            })
        }
        ty::READY => Frame::Ready {
            window: p.u32()?,
            window_log: p.u8()?,
        },
        ty::GROUPS => {
            // Each entry takes at least 9 bytes, so the payload bounds the count.
            let mut entries = Vec::with_capacity(p.remaining() / 9);
            while p.remaining() > 0 {
                entries.push(match p.u8()? {
                    0 => GroupEntry::Data(Digest(p.array()?)),
                    1 => match p.u64()? {
                        0 => return Err(p.err("empty zero run")),
                        n => GroupEntry::Zeros(n),
                    },
                    _ => return Err(p.err("unknown group entry")),
                });
            }
            if entries.is_empty() {
                return Err(p.err("no entries"));
            }
            Frame::Groups { entries }
        }
        ty::END => {
            let image_digest = Digest(p.array()?);
            let groups = p.u64()?;
            Frame::End { image_digest, groups }
        }
        ty::NEED_DIGESTS => {
            if p.remaining() == 0 || p.remaining() % 8 != 0 {
                return Err(p.err("payload is not a list of group indices"));
            }
            let mut groups = Vec::with_capacity(p.remaining() / 8);
            while p.remaining() > 0 {
                groups.push(p.u64()?);
            }
            Frame::NeedDigests { groups }
        }
        ty::NEED_KEYS => {
            if p.remaining() == 0 || p.remaining() % 8 != 0 {
                return Err(p.err("payload is not a list of group indices"));
            }
            let mut groups = Vec::with_capacity(p.remaining() / 8);
            while p.remaining() > 0 {
                groups.push(p.u64()?);
            }
            Frame::NeedKeys { groups }
        }
        ty::KEYS => {
            let group = p.u64()?;
            let n = p.remaining();
            if n == 0 || n % 8 != 0 || n / 8 > MAX_GROUP_BLOCKS {
                return Err(p.err("payload is not a list of block keys"));
            }
            let mut keys = Vec::with_capacity(n / 8);
            while p.remaining() > 0 {
                keys.push(p.u64()?);
            }
            Frame::Keys { group, keys }
        }
        ty::DIGESTS => {
            let group = p.u64()?;
            let n = p.remaining();
            if n == 0 || n % 32 != 0 || n / 32 > MAX_GROUP_BLOCKS {
                return Err(p.err("payload is not a list of block digests"));
            }
            let mut digests = Vec::with_capacity(n / 32);
            while p.remaining() > 0 {
                digests.push(Digest(p.array()?));
            }
            Frame::Digests { group, digests }
        }
        ty::NEED_BLOCKS => {
            if p.remaining() == 0 || p.remaining() % 12 != 0 {
                return Err(p.err("payload is not a list of block ranges"));
            }
            let mut ranges = Vec::with_capacity(p.remaining() / 12);
            while p.remaining() > 0 {
                let first = p.u64()?;
                let count = p.u32()?;
                if count == 0 || first.checked_add(u64::from(count)).is_none() {
                    return Err(p.err("invalid block range"));
                }
                ranges.push(BlockRange { first, count });
            }
            Frame::NeedBlocks { ranges }
        }
        ty::BLOCK => {
            let count = usize::from(p.u16()?);
            if count == 0 || count > MAX_PIECE_RANGES || count * 12 > p.remaining() {
                return Err(p.err("range count out of bounds"));
            }
            let mut ranges = Vec::with_capacity(count);
            for _ in 0..count {
                let first = p.u64()?;
                let count = p.u32()?;
                if count == 0 || first.checked_add(u64::from(count)).is_none() {
                    return Err(p.err("invalid block range"));
                }
                ranges.push(BlockRange { first, count });
            }
            let encoding = match p.u8()? {
                0 => Encoding::Raw,
                1 => Encoding::Zstd,
                2 => Encoding::ZstdStream,
                _ => return Err(p.err("unknown encoding")),
            };
            let data = p.rest();
            if data.is_empty() {
                return Err(p.err("empty block"));
            }
            Frame::Blocks {
                ranges,
                encoding,
                data,
            }
        }
        ty::CREDIT => Frame::Credit { completed: p.u64()? },
        ty::DONE => Frame::Done(DoneStats {
            blocks_zero: p.u64()?,
            blocks_local: p.u64()?,
            blocks_sent: p.u64()?,
            blocks_repaired: p.u64()?,
        }),
        ty::DESCRIBE => Frame::Describe {
            dry_run: p.bool()?,
            body: p.rest(),
        },
        ty::TELEPORT => {
            let stage = match p.u8()? {
                1 => TeleportStage::Planned,
                2 => TeleportStage::Prepared,
                3 => TeleportStage::Finished,
                _ => return Err(p.err("unknown stage")),
            };
            Frame::Teleport {
                stage,
                body: p.rest(),
            }
        }
        _ => return Err(FrameError::UnknownType(t)),
    };
    p.finish()?;
    Ok(f)
}
