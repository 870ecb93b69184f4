//! Groups: the stream of group entries, predictions, digests and what
//! to ask the sender for.

use super::*;

/// Where a block found locally came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The output being updated in place, at the block's own offset.
    SamePlace,
    /// Where its group was predicted to be.
    Predicted,
    /// Anywhere in the index.
    Indexed,
}

impl Engine {
    /// Accepts one entry of the group stream (processed by [`Engine::drain`]).
    pub(super) fn on_entry(&mut self, entry: GroupEntry) -> Result<()> {
        let g = self.head_group;
        let n = match entry {
            GroupEntry::Zeros(n) => n,
            GroupEntry::Data(_) => 1,
        };
        if g.checked_add(n).is_none_or(|end| end > self.shared.map.groups()) {
            return Err(self.protocol("group stream past the end of the image"));
        }
        self.head_group += n;
        let seq = self.data_seq;
        if let GroupEntry::Data(_) = entry {
            self.data_seq += 1;
            if self.data_seq - self.completed > u64::from(self.window_groups) {
                return Err(self.protocol("more data groups in flight than the window allows"));
            }
        }
        self.deferred.push_back((g, seq, entry));
        Ok(())
    }

    /// Processes the entries received, in order; data groups wait while a
    /// probe for the cursor is outstanding, and while the predictors are
    /// busy (the engine never blocks on them: a DIGESTS or BLOCK frame that
    /// arrives meanwhile is handled at once, not after the predictions of
    /// every group received before it).
    pub(super) fn drain(&mut self) -> Result<()> {
        while let Some(&(g, seq, entry)) = self.deferred.front() {
            match entry {
                GroupEntry::Zeros(n) => {
                    self.deferred.pop_front();
                    self.zero_groups(g, n)?;
                }
                GroupEntry::Data(digest) => {
                    if self.probe.is_some() && self.cursor.is_none() {
                        break;
                    }
                    if self.cursor.is_some() && self.predicting >= self.max_predicting {
                        break;
                    }
                    self.deferred.pop_front();
                    self.data_group(g, seq, digest)?;
                }
            }
        }
        Ok(())
    }

    /// The source offset of the next group to process.
    pub(super) fn next_offset(&self) -> u64 {
        let map = &self.shared.map;
        let g = self.deferred.front().map_or(self.head_group, |(g, _, _)| *g);
        map.group(g).map_or_else(
            || {
                map.group(map.groups().saturating_sub(1))
                    .map_or(0, |s| s.offset + s.len)
            },
            |s| s.offset,
        )
    }

    pub(super) fn zero_groups(&mut self, first: u64, n: u64) -> Result<()> {
        let mut bytes = 0;
        for g in first..first + n {
            let span = self
                .shared
                .map
                .group(g)
                .ok_or_else(|| self.protocol("no such group"))?;
            bytes += span.len;
            // Zero blocks stay holes in the output and in the manifest (in
            // place: they are made zeros).
            self.stats.blocks_zero += u64::from(span.blocks);
            let len = u32::try_from(span.len).map_err(|_| self.protocol("group too large"))?;
            self.shared.assembly()?.zero(span.offset, len)?;
        }
        if let Some((_, off)) = self.cursor.as_mut() {
            *off += bytes;
        }
        Ok(())
    }

    pub(super) fn data_group(&mut self, g: u64, seq: u64, digest: Digest) -> Result<()> {
        let span = self
            .shared
            .map
            .group(g)
            .ok_or_else(|| self.protocol("no such group"))?;
        if let Some((image, offset)) = self.cursor {
            self.cursor = Some((image, offset + span.len));
            let job = PredictJob {
                g,
                seq,
                digest,
                span,
                image,
                offset,
            };
            let jobs = self
                .jobs
                .as_ref()
                .ok_or_else(|| Error::Internal("the predictors were stopped".into()))?;
            jobs.send(job)
                .map_err(|_| Error::Internal("the predictor threads stopped".into()))?;
            self.predicting += 1;
            return Ok(());
        }
        self.unpredicted(g, seq, digest, span, None)
    }

    /// A predictor's verdict on a data group.
    pub(super) fn on_prediction(&mut self, job: PredictJob, outcome: Result<Outcome>) -> Result<()> {
        self.predicting -= 1;
        match outcome? {
            Outcome::Matched { zero, local } => {
                self.stats.blocks_zero += zero;
                self.stats.blocks_local += local;
                self.miss_streak = 0;
                self.reconsider_whole();
                self.done_seqs.insert(job.seq);
                self.advance_credit()
            }
            Outcome::Missed(local) => {
                let predicted = local.map(|l| (job.image, job.offset, l));
                self.unpredicted(job.g, job.seq, job.digest, job.span, predicted)
            }
        }
    }

    /// A data group not found where predicted (or with no prediction):
    /// decides how to resolve it and asks the sender.
    pub(super) fn unpredicted(
        &mut self,
        g: u64,
        seq: u64,
        digest: Digest,
        span: GroupSpan,
        predicted: Option<(u32, u64, Vec<Digest>)>,
    ) -> Result<()> {
        let fetch = if !self.hopeful && self.shared.index.stats().unique_blocks == 0 {
            Fetch::Whole
        } else if self.cursor.is_none() && self.hopeful {
            // Find the cursor first; later data groups wait for the answer.
            self.probe = Some(g);
            Fetch::Digests
        } else if self.miss_streak >= MISS_STREAK && self.shared.out_image.is_some() {
            // In place, a group's blocks are resolved through full digests
            // (32 bytes each), so a streak of misses is fetched whole. Keys
            // (8 bytes) are cheap enough to look every group up: fetching
            // whole sent blocks that were there after all, and how many
            // depended on timing (15 964 to 17 151 blocks on `web ← min`).
            self.whole_count += 1;
            if self.whole_count % PROBE_EVERY == 0 {
                Fetch::Digests
            } else {
                Fetch::Whole
            }
        } else {
            Fetch::Digests
        };
        let mut p = Pending {
            seq,
            span,
            digest,
            predicted,
            whole: None,
            keyed: false,
            resolved: false,
            missing: 0,
        };
        match fetch {
            Fetch::Digests => p.keyed = self.ask_for_keys(g),
            Fetch::Whole => {
                p.whole = Some(WholeGroup::new(span.blocks));
                p.missing = span.blocks;
                for (i, b) in self.shared.map.group_blocks_spans(&span).enumerate() {
                    let block = span.first_block + i as u64;
                    self.awaiting.insert(
                        block,
                        Awaited {
                            group: g,
                            digest: None,
                            len: b.len,
                        },
                    );
                    self.want.push_back(block);
                }
                self.whole_queued.push_back(g);
                // Older ones were requested by now: at most a window of
                // data groups waits for its blocks.
                while self.whole_queued.len() > self.window_groups as usize {
                    self.whole_queued.pop_front();
                }
            }
        }
        self.pending.insert(g, p);
        Ok(())
    }

    /// The streak of misses ended (a group was found locally after all):
    /// groups queued for a whole fetch none of whose blocks was requested
    /// yet are resolved through their digests instead, since they may hold
    /// local blocks too. Without this, which groups were fetched whole
    /// depended on the order the predictors answered in, and a run sent
    /// several percent more blocks than `cbt estimate` counted.
    pub(super) fn reconsider_whole(&mut self) {
        if self.whole_queued.is_empty() {
            return;
        }
        let mut withdrawn: HashSet<u64> = HashSet::new();
        let mut reask = Vec::new();
        for g in std::mem::take(&mut self.whole_queued) {
            let Some(p) = self.pending.get_mut(&g) else {
                continue;
            };
            let Some(whole) = &p.whole else { continue };
            let (first, end) = (p.span.first_block, p.span.first_block + u64::from(p.span.blocks));
            let untouched =
                whole.received.iter().all(|r| !r) && (first..end).all(|b| !self.outstanding.contains_key(&b));
            if !untouched {
                continue;
            }
            for b in first..end {
                self.awaiting.remove(&b);
                withdrawn.insert(b);
            }
            p.whole = None;
            p.missing = 0;
            reask.push(g);
        }
        if !withdrawn.is_empty() {
            self.want.retain(|b| !withdrawn.contains(b));
        }
        for g in reask {
            let keyed = self.ask_for_keys(g);
            if let Some(p) = self.pending.get_mut(&g) {
                p.keyed = keyed;
            }
        }
    }

    /// What looking a group's blocks up found (through digests or keys)
    /// steers what comes next: the streak of misses, the probe, and the
    /// cursor. `last_hit`: (image, end of the last block found in the
    /// index there, its end in the source).
    pub(super) fn after_lookup(
        &mut self,
        g: u64,
        other_hits: bool,
        predicted_hits: u32,
        last_hit: Option<(u32, u64, u64)>,
    ) {
        let hits = other_hits || predicted_hits > 0 || last_hit.is_some();
        if hits {
            self.miss_streak = 0;
            self.whole_count = 0;
            self.hopeful = true;
            self.reconsider_whole();
        } else {
            self.miss_streak += 1;
        }
        if self.probe == Some(g) {
            self.probe = None;
            self.hopeful = hits;
        }
        // Follow the data: if the prediction found nothing but the index
        // did, predict the next groups from the last block found.
        if predicted_hits == 0 {
            if let Some((img, loc_end, src_end)) = last_hit {
                self.cursor = Some((img, loc_end + (self.next_offset() - src_end)));
            }
        }
    }

    /// The block digests of a group whose prediction failed.
    pub(super) fn on_digests(&mut self, g: u64, digests: Vec<Digest>) -> Result<()> {
        let Some(mut p) = self.pending.remove(&g) else {
            return Err(self.protocol(format!("digests of group {g}, which was not asked for")));
        };
        if p.resolved
            || p.whole.is_some()
            || digests.len() != p.span.blocks as usize
            || group_digest(&digests) != p.digest
        {
            return Err(self.protocol(format!("digests of group {g} do not match its group digest")));
        }
        let blocks: Vec<BlockSpan> = self.shared.map.group_blocks_spans(&p.span).collect();
        // Where each block may be found locally, in order: in place, the
        // output itself at this very offset; then where the group was
        // predicted; then anywhere in the index.
        let mut candidates: Vec<Vec<(Location, Found)>> = vec![Vec::new(); blocks.len()];
        let mut expected: Vec<Option<Digest>> = vec![None; blocks.len()];
        let mut zero_blocks: Vec<(u64, u32)> = Vec::new();
        for (i, (b, d)) in blocks.iter().zip(&digests).enumerate() {
            if *d == self.zeros.get(b.len) {
                self.stats.blocks_zero += 1;
                zero_blocks.push((b.offset, b.len));
                continue;
            }
            expected[i] = Some(*d);
            let c = &mut candidates[i];
            if let Some(out) = self.shared.out_image {
                c.push((
                    Location {
                        image: out,
                        offset: b.offset,
                    },
                    Found::SamePlace,
                ));
            }
            if let Some((img, off, local)) = &p.predicted {
                if local[i] == *d {
                    let offset = off + (b.offset - p.span.offset);
                    c.push((Location { image: *img, offset }, Found::Predicted));
                }
            }
            if let Some(loc) = self.shared.index.lookup(d) {
                c.push((loc, Found::Indexed));
            }
        }
        let lens: Vec<u32> = blocks.iter().map(|b| b.len).collect();
        self.buf.resize(p.span.len as usize, 0);
        let shared = &self.shared;
        // Each candidate's bytes are hashed once, by the assembly's check.
        let (checked, matched) = shared.assembly()?.probe(
            p.span.first_block,
            p.span.offset,
            &mut self.buf,
            &lens,
            &expected,
            &mut self.zeros,
            |i, k, bytes| {
                let Some((loc, found)) = candidates[i].get(k) else {
                    return Candidate::None;
                };
                // The output at this very offset is read by the assembly,
                // which then keeps the block where it is.
                if *found == Found::SamePlace {
                    return Candidate::InPlace;
                }
                if !shared.read_at(*loc, bytes) {
                    // Unreadable: zeros, which never match a non-zero digest.
                    bytes.fill(0);
                }
                Candidate::Filled
            },
        );
        let mut predicted_hits = 0u32;
        let mut last_hit: Option<(u32, u64, u64)> = None;
        for (i, b) in blocks.iter().enumerate() {
            let Some(d) = expected[i] else { continue };
            let tried = matched[i].map_or(candidates[i].len(), |k| k + 1);
            for (k, (loc, _)) in candidates[i].iter().enumerate().take(tried) {
                if loc.image != OUT_IMAGE {
                    let ok = matched[i] == Some(k);
                    shared
                        .index
                        .note_seed_check(loc.image, u64::from(ok), u64::from(!ok));
                }
            }
            match matched[i].map(|k| candidates[i][k]) {
                Some((_, Found::SamePlace)) => {}
                Some((_, Found::Predicted)) => predicted_hits += 1,
                Some((loc, Found::Indexed)) => {
                    last_hit = Some((
                        loc.image,
                        loc.offset + u64::from(b.len),
                        b.offset + u64::from(b.len),
                    ));
                }
                None => {
                    if candidates[i].iter().any(|(_, f)| *f == Found::Indexed) {
                        self.rejected += 1;
                    }
                    let block = p.span.first_block + i as u64;
                    self.awaiting.insert(
                        block,
                        Awaited {
                            group: g,
                            digest: Some(d),
                            len: b.len,
                        },
                    );
                    self.want.push_back(block);
                    p.missing += 1;
                }
            }
        }
        self.stats.blocks_local += matched.iter().filter(|m| m.is_some()).count() as u64;
        self.shared.assembly()?.place(&checked)?;
        let kept = checked.kept().iter().filter(|k| **k).count() as u64;
        let kept_any = kept > 0;
        self.shared
            .unchanged
            .fetch_add(kept, std::sync::atomic::Ordering::Relaxed);
        for (i, m) in matched.iter().enumerate() {
            if let Some(k) = *m {
                self.shared.index.note_supplied(candidates[i][k].0.image, 1);
            }
        }
        for (offset, len) in zero_blocks {
            self.shared.assembly()?.zero(offset, len)?;
        }

        self.after_lookup(g, kept_any, predicted_hits, last_hit);
        p.resolved = true;
        let missing = p.missing;
        self.pending.insert(g, p);
        if missing == 0 {
            self.complete(g)?;
        }
        Ok(())
    }
}
