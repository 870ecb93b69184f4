//! `cbt-net`: network transfer of images between hosts (protocol, sender,
//! receiver, daemon). Not yet implemented: see the cbt-net issue.
#![forbid(unsafe_code)]
