//! Blocks from the sender, completed groups, credit and block requests.

use super::*;

impl Engine {
    /// A BLOCKS frame: a piece holding the blocks of `ranges`, in order.
    pub(super) fn on_blocks(&mut self, ranges: &[BlockRange], encoding: Encoding, data: &[u8]) -> Result<()> {
        let blocks = self.take_piece(ranges)?;
        let total: usize = blocks.iter().map(|(_, a)| a.len as usize).sum();
        let mut out = std::mem::take(&mut self.piece_buf);
        let plain = self
            .decompressor
            .decode(encoding, data, total, &mut out)
            .map_err(|e| self.protocol(format!("blocks from {}: {e}", ranges[0].first)))?;
        self.compression.uncompressed_bytes += total as u64;
        self.compression.compressed_bytes += data.len() as u64;
        if let Some(p) = &self.progress {
            Progress::set(&p.uncompressed_bytes, self.compression.uncompressed_bytes);
            Progress::set(&p.compressed_bytes, self.compression.compressed_bytes);
        }
        let mut at = 0usize;
        for (index, a) in blocks {
            let len = a.len as usize;
            self.on_block(index, a, &plain[at..at + len])?;
            at += len;
        }
        self.piece_buf = out;
        Ok(())
    }

    /// The blocks a piece carries, each of which must have been asked for
    /// and not received yet; they are no longer outstanding.
    pub(super) fn take_piece(&mut self, ranges: &[BlockRange]) -> Result<Vec<(u64, Awaited)>> {
        let mut blocks = Vec::new();
        let mut bytes = 0usize;
        for r in ranges {
            for index in r.first..r.first.saturating_add(u64::from(r.count)) {
                let (Some(a), Some(len)) = (self.awaiting.remove(&index), self.outstanding.remove(&index))
                else {
                    return Err(self.protocol(format!("block {index} was not asked for")));
                };
                bytes += len as usize;
                if bytes > MAX_PIECE_BYTES {
                    return Err(self.protocol(format!("a piece of more than {MAX_PIECE_BYTES} bytes")));
                }
                self.outstanding_bytes -= u64::from(len);
                self.pace.received(index, len, self.outstanding_bytes == 0);
                blocks.push((index, a));
            }
        }
        Ok(blocks)
    }

    /// Block `index`, awaited as `a`, arrived holding `data`.
    fn on_block(&mut self, index: u64, a: Awaited, data: &[u8]) -> Result<()> {
        let span = self
            .shared
            .map
            .span(index)
            .ok_or_else(|| self.protocol("block index out of range"))?;
        if data.len() != a.len as usize {
            return Err(self.protocol(format!(
                "block {index} of {} bytes, expected {}",
                data.len(),
                a.len
            )));
        }
        if is_zero(data) {
            self.stats.blocks_zero += 1;
        } else {
            self.stats.blocks_sent += 1;
        }
        let p = self
            .pending
            .get_mut(&a.group)
            .ok_or_else(|| Error::Internal("lost group".into()))?;
        p.missing -= 1;
        if let Some(digest) = a.digest {
            let checked = Checked::each(
                index,
                span.offset,
                data,
                &[a.len],
                Expected::Digests(&[digest]),
                &mut self.zeros,
            );
            if !checked.good().first().copied().unwrap_or(false) {
                return Err(Error::protocol(
                    &self.peer,
                    format!("block {index} does not match its digest (did the source image change?)"),
                ));
            }
            self.shared.assembly()?.place(&checked)?;
        } else {
            let Some(whole) = p.whole.as_mut() else {
                return Err(Error::protocol(
                    &self.peer,
                    format!("block {index} has no digest to check"),
                ));
            };
            let at = (span.offset - p.span.offset) as usize;
            if whole.data.is_empty() {
                whole.data.resize(p.span.len as usize, 0);
            }
            whole.data[at..at + data.len()].copy_from_slice(data);
            whole.received[(index - p.span.first_block) as usize] = true;
            if p.missing == 0 {
                return self.check_whole(a.group);
            }
        }
        let complete = p.missing == 0 && p.resolved;
        if complete {
            self.complete(a.group)?;
        }
        Ok(())
    }

    pub(super) fn complete(&mut self, g: u64) -> Result<()> {
        if let Some(p) = self.pending.remove(&g) {
            self.done_seqs.insert(p.seq);
        }
        self.advance_credit()
    }

    pub(super) fn advance_credit(&mut self) -> Result<()> {
        while self.done_seqs.first() == Some(&self.completed) {
            self.done_seqs.pop_first();
            self.completed += 1;
        }
        let step = u64::from((self.window_groups / 8).max(1));
        if self.completed >= self.credited + step {
            self.credited = self.completed;
            self.send(Frame::Credit {
                completed: self.completed,
            })?;
        }
        Ok(())
    }

    /// Sends the digest requests gathered and as many block requests as the
    /// byte window allows.
    pub(super) fn flush_requests(&mut self) -> Result<()> {
        if !self.need_keys.is_empty() {
            let groups = std::mem::take(&mut self.need_keys);
            for chunk in groups.chunks(MAX_RANGES_PER_FRAME) {
                self.send(Frame::NeedKeys {
                    groups: chunk.to_vec(),
                })?;
            }
        }
        if !self.need_digests.is_empty() {
            let groups = std::mem::take(&mut self.need_digests);
            for chunk in groups.chunks(MAX_RANGES_PER_FRAME) {
                self.send(Frame::NeedDigests {
                    groups: chunk.to_vec(),
                })?;
            }
        }
        // Refill the block window once an eighth of it drained, so requests
        // go out in runs rather than one block per block received.
        let window = self.pace.window();
        if self.want.is_empty() || self.outstanding_bytes + window / 8 > window {
            return Ok(());
        }
        let idle = self.outstanding_bytes == 0;
        if let Some(&first) = self.want.front() {
            self.pace.requested(first, idle);
        }
        let mut ranges: Vec<BlockRange> = Vec::new();
        while self.outstanding_bytes < window {
            let Some(block) = self.want.pop_front() else { break };
            let len = self.awaiting.get(&block).map_or(0, |a| a.len);
            self.outstanding.insert(block, len);
            self.outstanding_bytes += u64::from(len);
            match ranges.last_mut() {
                Some(r) if r.first + u64::from(r.count) == block && r.count < u32::MAX => r.count += 1,
                _ => ranges.push(BlockRange {
                    first: block,
                    count: 1,
                }),
            }
            if ranges.len() >= MAX_RANGES_PER_FRAME {
                self.send(Frame::NeedBlocks {
                    ranges: std::mem::take(&mut ranges),
                })?;
            }
        }
        if !ranges.is_empty() {
            self.send(Frame::NeedBlocks { ranges })?;
        }
        Ok(())
    }
}
