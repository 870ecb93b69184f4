//! The block store on S3-compatible object storage (docs/STORE.md): one
//! upload of an image's blocks serves any number of hosts, each fetching
//! only the blocks it holds nowhere locally.
//!
//! `format` encodes the objects (packs, manifests) and checks them like
//! every peer's bytes; `client` reaches the store (object_store's S3
//! client); `push` uploads what the store lacks; `pull` rebuilds an image
//! through the engine (`cbt_core::reconstruct`) with the store as the
//! source of missing blocks; `maintain` lists, verifies and collects
//! garbage.

mod client;
pub mod format;
mod maintain;
mod pull;
mod push;

pub use client::{hex, CredentialSource, Credentials, PackInfo, Store, StoreOptions, StoreUrl};
pub use maintain::{gc, list_images, verify, GcReport, Listed, ListedImage, VerifyReport};
pub use pull::{pull, read_manifest, PullReport};
pub use push::{push, PushOptions, PushReport, PACK_BYTES};
