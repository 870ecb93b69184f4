//! Fetching blocks again over the connection for the readback's repair.

use super::*;

/// Fetches blocks again over the connection for the readback's repair.
pub(super) struct Repair<'e> {
    pub(super) engine: &'e mut Engine,
}

impl BlockSource for Repair<'_> {
    fn name(&self) -> String {
        self.engine.peer.clone()
    }

    fn fetch(
        &mut self,
        wanted: crossbeam_channel::Receiver<BlockRef>,
        deliver: &mut dyn FnMut(BlockRef, &[u8]) -> cbt_core::Result<()>,
    ) -> cbt_core::Result<()> {
        let peer = self.engine.peer.clone();
        let wrap = move |e: Error| cbt_core::Error::BlockSource {
            name: peer.clone(),
            source: Box::new(e),
        };
        let e = &mut *self.engine;
        let mut expected: HashMap<u64, BlockRef> = HashMap::new();
        for b in wanted.iter() {
            let map = &e.shared.map;
            let Some(index) = map
                .index_of(b.offset)
                .filter(|i| map.span(*i).is_some_and(|s| s.len == b.len))
            else {
                return Err(cbt_core::Error::Protocol(format!(
                    "no block of the layout at offset {}",
                    b.offset
                )));
            };
            expected.insert(index, b);
            e.want.push_back(index);
            e.awaiting.insert(
                index,
                Awaited {
                    group: u64::MAX,
                    digest: Some(b.digest),
                    len: b.len,
                },
            );
        }
        while !expected.is_empty() {
            e.flush_requests().map_err(&wrap)?;
            let frame = e.recv_frame().map_err(&wrap)?;
            let Frame::Blocks {
                ranges,
                encoding,
                data,
            } = frame
            else {
                let reason = format!("unexpected {} frame during repair", frame.name());
                return Err(wrap(e.protocol(reason)));
            };
            let blocks = e.take_piece(&ranges).map_err(&wrap)?;
            let total: usize = blocks.iter().map(|(_, a)| a.len as usize).sum();
            let mut out = std::mem::take(&mut e.piece_buf);
            let plain = e
                .decompressor
                .decode(encoding, &data, total, &mut out)
                .map_err(|r| {
                    wrap(Error::protocol(
                        &e.peer,
                        format!("blocks from {}: {r}", ranges[0].first),
                    ))
                })?;
            let mut at = 0usize;
            for (index, a) in blocks {
                let Some(b) = expected.remove(&index) else {
                    return Err(wrap(e.protocol(format!("block {index} was not asked for"))));
                };
                let len = a.len as usize;
                e.stats.blocks_sent += 1;
                deliver(b, &plain[at..at + len])?;
                at += len;
            }
            e.piece_buf = out;
        }
        Ok(())
    }
}
