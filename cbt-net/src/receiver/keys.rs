//! Groups resolved through block keys: the first 8 bytes of each block
//! digest, a quarter of the bytes of full digests on the wire.
//!
//! A key finds a candidate (in the index, or where the group was
//! predicted), and a candidate whose full hash starts with the key is taken
//! provisionally; it proves nothing yet. So the group is held, like a group
//! fetched whole: the candidates and the blocks that were not found (asked
//! for without digests) fill one buffer, and only when the group digest
//! over all of them checks out is anything written. A mismatch (a key
//! shared by two different blocks) is not an error: the group falls back
//! to its full digests (NEED_DIGESTS), once. Groups holding blocks found
//! locally take at most [`MAX_KEYED_BYTES`]; past it, a group asks for its
//! full digests instead. A group with nothing found locally is held only
//! as its blocks arrive, as a group fetched whole is.

use super::*;

/// The most bytes of groups held while resolved through keys.
pub(super) const MAX_KEYED_BYTES: u64 = 32 << 20;

impl Engine {
    /// Whether a group about to ask what its blocks are should ask for
    /// keys: not in place (there, a block already at its own offset is
    /// kept without being rewritten, which needs its full digest).
    pub(super) fn ask_for_keys(&mut self, g: u64) -> bool {
        let keyed = self.shared.out_image.is_none();
        if keyed {
            self.need_keys.push(g);
        } else {
            self.need_digests.push(g);
        }
        keyed
    }

    /// The block keys of a group whose prediction failed.
    pub(super) fn on_keys(&mut self, g: u64, keys: Vec<u64>) -> Result<()> {
        let Some(mut p) = self.pending.remove(&g) else {
            return Err(self.protocol(format!("keys of group {g}, which was not asked for")));
        };
        if !p.keyed || p.resolved || p.whole.is_some() || keys.len() != p.span.blocks as usize {
            return Err(self.protocol(format!("keys of group {g} that were not asked for")));
        }
        let blocks: Vec<BlockSpan> = self.shared.map.group_blocks_spans(&p.span).collect();
        let mut whole = WholeGroup::new(p.span.blocks);
        whole.data.resize(p.span.len as usize, 0);
        let mut awaited: Vec<(u64, u32)> = Vec::new();
        let mut predicted_hits = 0u32;
        let mut last_hit: Option<(u32, u64, u64)> = None;
        let mut at = 0usize;
        for (i, (b, &key)) in blocks.iter().zip(&keys).enumerate() {
            let len = b.len as usize;
            let block = &mut whole.data[at..at + len];
            at += len;
            if key == self.zeros.get(b.len).short() {
                // Zeros, as the buffer already holds; the group digest checks it.
                whole.received[i] = true;
                whole.zero += 1;
                continue;
            }
            let mut candidates: Vec<(Location, bool)> = Vec::with_capacity(2);
            if let Some((img, off, local)) = &p.predicted {
                if local.get(i).is_some_and(|d| d.short() == key) {
                    let offset = off + (b.offset - p.span.offset);
                    candidates.push((Location { image: *img, offset }, true));
                }
            }
            if let Some(loc) = self.shared.index.lookup_key(key) {
                candidates.push((loc, false));
            }
            let mut found = None;
            for (loc, predicted) in candidates {
                let ok =
                    self.shared.read_at(loc, block) && !is_zero(block) && Digest::of(block).short() == key;
                if !predicted {
                    self.shared
                        .index
                        .note_seed_check(loc.image, u64::from(ok), u64::from(!ok));
                }
                if ok {
                    if predicted {
                        predicted_hits += 1;
                    } else {
                        last_hit = Some((
                            loc.image,
                            loc.offset + u64::from(b.len),
                            b.offset + u64::from(b.len),
                        ));
                    }
                    found = Some(loc.image);
                    break;
                }
                self.rejected += u64::from(!predicted);
            }
            if let Some(image) = found {
                whole.received[i] = true;
                whole.local += 1;
                whole.sources.push(image);
                continue;
            }
            block.fill(0);
            awaited.push((p.span.first_block + i as u64, b.len));
        }
        if whole.local > 0 {
            // Blocks found locally are held until the group checks out:
            // bounded. Past the bound, the group asks for full digests.
            if self.keyed_bytes + p.span.len > MAX_KEYED_BYTES {
                p.keyed = false;
                self.need_digests.push(g);
                self.pending.insert(g, p);
                return Ok(());
            }
            whole.reserved = p.span.len;
            self.keyed_bytes += p.span.len;
        } else if !awaited.is_empty() {
            // Nothing local: held only as its blocks arrive, like a group
            // fetched whole (bounded by the block window).
            whole.data = Vec::new();
        }
        for (index, len) in awaited {
            self.awaiting.insert(
                index,
                Awaited {
                    group: g,
                    digest: None,
                    len,
                },
            );
            self.want.push_back(index);
            p.missing += 1;
        }

        self.after_lookup(g, false, predicted_hits, last_hit);
        p.whole = Some(whole);
        let missing = p.missing;
        self.pending.insert(g, p);
        if missing == 0 {
            self.check_whole(g)?;
        }
        Ok(())
    }

    /// All blocks of group `g`, fetched whole or resolved through keys,
    /// are in: checks the group digest over them and writes them, or (for
    /// keys) falls back to full digests.
    pub(super) fn check_whole(&mut self, g: u64) -> Result<()> {
        let Some(p) = self.pending.get_mut(&g) else {
            return Err(Error::Internal("lost group".into()));
        };
        let Some(whole) = p.whole.take() else {
            return Err(Error::Internal("group held without its blocks".into()));
        };
        let lens: Vec<u32> = self
            .shared
            .map
            .group_blocks_spans(&p.span)
            .map(|b| b.len)
            .collect();
        let expected = p.digest;
        let checked = Checked::together(
            p.span.first_block,
            p.span.offset,
            &whole.data,
            &lens,
            |digests| group_digest(digests) == expected,
            &mut self.zeros,
        );
        let good = checked.good().first().copied().unwrap_or(false);
        self.keyed_bytes = self.keyed_bytes.saturating_sub(whole.reserved);
        if p.keyed {
            p.keyed = false;
            if !good {
                // Two different blocks share a key: resolve the group
                // through its full digests (the blocks received are lost).
                tracing::debug!(
                    group = g,
                    "a block key matched another block; asking for full digests"
                );
                p.missing = 0;
                self.need_digests.push(g);
                return Ok(());
            }
            self.stats.blocks_local += whole.local;
            self.stats.blocks_zero += whole.zero;
            for image in &whole.sources {
                self.shared.index.note_supplied(*image, 1);
            }
        } else if !good {
            return Err(Error::protocol(
                &self.peer,
                format!(
                    "the blocks of group {g} do not match its group digest (did the source image change?)"
                ),
            ));
        }
        self.shared.assembly()?.place(&checked)?;
        if let Some(p) = self.pending.get_mut(&g) {
            p.resolved = true;
        }
        self.complete(g)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cbt_core::{open_image, ImageSpec};
    use tokio::net::TcpListener;

    use crate::{push, receive_once, ClientOptions, Compression, ReceiveOptions, SendOptions, Shutdown};

    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    /// A key that finds a different block (a collision, or a lying sender)
    /// is caught by the group digest: the group is resolved again through
    /// full digests and the output is exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_that_finds_the_wrong_block_falls_back_to_digests() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src.img");
        let seeds = dir.path().join("seeds");
        std::fs::create_dir(&seeds).unwrap();
        let mut src = noise(4 << 20, 7);
        let seed = src.clone();
        // Block 5 differs; the sender claims it has the key of the seed's
        // block 5, which the receiver holds.
        src[5 * 4096..6 * 4096].copy_from_slice(&noise(4096, 99));
        std::fs::write(&src_path, &src).unwrap();
        std::fs::write(seeds.join("seed.img"), &seed).unwrap();
        let real = cbt_core::Digest::of(&src[5 * 4096..6 * 4096]).short();
        let lie = cbt_core::Digest::of(&seed[5 * 4096..6 * 4096]).short();
        *crate::sender::SWAP_KEY.lock().unwrap() = Some((real, lie));

        let out = dir.path().join("out.img");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut ro = ReceiveOptions::new(out.clone());
        ro.seeds = vec![seeds];
        let receiver = tokio::spawn(async move {
            receive_once(listener, ro, &ClientOptions::default(), Shutdown::never()).await
        });
        let so = SendOptions {
            compression: Compression::Zstd(3),
            ..Default::default()
        };
        let image = open_image(&ImageSpec::file(&src_path)).unwrap();
        let sent = push(
            &addr,
            None,
            image,
            &so,
            &ClientOptions::default(),
            Shutdown::never(),
        )
        .await;
        let received = receiver.await.unwrap();
        *crate::sender::SWAP_KEY.lock().unwrap() = None;
        let (sent, received) = (sent.unwrap(), received.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), src);
        assert_eq!(received.blocks_sent, 1, "{received:?}");
        assert_eq!(received.blocks_local, 1023, "{received:?}");
        assert_eq!(sent.image_digest, received.image_digest);
    }
}
