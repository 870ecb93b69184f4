//! Shared helpers for cbt's benchmarks.
