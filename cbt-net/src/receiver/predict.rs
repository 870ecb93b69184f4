//! Predictor threads: check data groups at their predicted local position
//! (read, hash, compare the group digest) and place the ones that match.

use super::*;

/// What the engine waits for.
pub(super) enum Event {
    /// A frame from the peer (or the connection's end).
    Frame(Result<Frame>),
    /// A predictor's verdict on a job.
    Predicted(PredictJob, Result<Outcome>),
}

/// Check whether a data group is at a predicted local position.
pub(super) struct PredictJob {
    pub(super) g: u64,
    pub(super) seq: u64,
    pub(super) digest: Digest,
    pub(super) span: GroupSpan,
    pub(super) image: u32,
    pub(super) offset: u64,
}

pub(super) enum Outcome {
    /// Found and written: its zero and non-zero blocks.
    Matched { zero: u64, local: u64 },
    /// Not there; the digests of the blocks found there, if readable.
    Missed(Option<Vec<Digest>>),
}

/// A predictor thread: checks data groups at their predicted local
/// position and writes those that match.
pub(super) fn predictor(
    shared: &Shared,
    jobs: &crossbeam_channel::Receiver<PredictJob>,
    events: &mpsc::UnboundedSender<Event>,
) {
    let mut buf = Vec::new();
    let mut zeros = ZeroDigests::default();
    for job in jobs {
        let outcome = check_prediction(shared, &job, &mut buf, &mut zeros);
        if events.send(Event::Predicted(job, outcome)).is_err() {
            break;
        }
    }
}

pub(super) fn check_prediction(
    shared: &Shared,
    job: &PredictJob,
    buf: &mut Vec<u8>,
    zeros: &mut ZeroDigests,
) -> Result<Outcome> {
    let span = &job.span;
    let Some(image) = shared.open(job.image) else {
        return Ok(Outcome::Missed(None));
    };
    if job
        .offset
        .checked_add(span.len)
        .is_none_or(|end| end > image.len())
    {
        return Ok(Outcome::Missed(None));
    }
    let lens: Vec<u32> = shared.map.group_blocks_spans(span).map(|b| b.len).collect();
    // The group digest covers the full digests of its blocks: accepting
    // the group accepts every block in it.
    let accept = |digests: &[Digest]| group_digest(digests) == job.digest;
    let assembly = shared.assembly()?;
    buf.resize(span.len as usize, 0);
    let mut check = |data| Checked::together(span.first_block, span.offset, data, &lens, accept, zeros);
    // In place, the output itself at the group's own offset: nothing moves.
    let here = shared.out_image == Some(job.image) && job.offset == span.offset;
    // From a raw seed the kernel copies (shares, on XFS and btrfs).
    let cloned = match image.raw_file().filter(|_| !here) {
        Some(seed) => assembly.clone_in(seed, job.offset, span.offset, span.len)?,
        None => None,
    };
    let checked = match cloned {
        // Checked where it landed (accepted blocks are recorded).
        Some(cloned) => assembly.check_cloned(cloned, buf, check)?,
        None if here => assembly.check_output(span.offset, buf, check)?,
        None => {
            if image.read_at(buf, job.offset).is_err() {
                return Ok(Outcome::Missed(None));
            }
            let checked = check(buf);
            if checked.good().first().copied().unwrap_or(false) {
                assembly.place(&checked)?;
            }
            checked
        }
    };
    if !checked.good().first().copied().unwrap_or(false) {
        return Ok(Outcome::Missed(Some(checked.digests().to_vec())));
    }
    let zero = checked.good_zero().filter(|z| *z).count() as u64;
    let local = lens.len() as u64 - zero;
    if here {
        shared
            .unchanged
            .fetch_add(local, std::sync::atomic::Ordering::Relaxed);
    }
    shared.index.note_seed_check(job.image, local, 0);
    shared.index.note_supplied(job.image, local);
    Ok(Outcome::Matched { zero, local })
}
