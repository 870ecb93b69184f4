//! What the engine and the predictor threads share: the index, the
//! assembly, the block map, and (in place) the output being updated.

use super::*;

/// What the engine and the predictor threads share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) index: Arc<Index>,
    /// Always there, except while the engine finishes it.
    pub(super) assembly: Option<Arc<Assembly>>,
    pub(super) map: BlockMap,
    /// In place: [`OUT_IMAGE`], the output's number among the images
    /// blocks are read from.
    pub(super) out_image: Option<u32>,
    /// In place: the output itself, read (not through the index).
    pub(super) out: Option<Arc<dyn Image>>,
    /// In place: blocks found in the output at their own offset (kept).
    pub(super) unchanged: Arc<std::sync::atomic::AtomicU64>,
}

/// The image number that stands for the output updated in place.
pub(super) const OUT_IMAGE: u32 = u32::MAX;

impl Shared {
    /// Image `i` of the index, or the output updated in place.
    pub(super) fn open(&self, i: u32) -> Option<Arc<dyn Image>> {
        match (&self.out, i) {
            (Some(out), OUT_IMAGE) => Some(Arc::clone(out)),
            _ => self.index.open(i).ok(),
        }
    }

    /// Reads the block at `loc` into `buf`; false if there is no such
    /// image or the block lies past its end.
    pub(super) fn read_at(&self, loc: Location, buf: &mut [u8]) -> bool {
        let Some(image) = self.open(loc.image) else {
            return false;
        };
        loc.offset
            .checked_add(buf.len() as u64)
            .is_some_and(|e| e <= image.len())
            && image.read_at(buf, loc.offset).is_ok()
    }

    pub(super) fn assembly(&self) -> Result<&Assembly> {
        self.assembly
            .as_deref()
            .ok_or_else(|| Error::Internal("the output is being verified".into()))
    }
}
