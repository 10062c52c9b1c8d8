//! pgtide as a library: the parts behind the `pgtide` binary, each in its own module. The binary
//! (`main.rs`) is the CLI; benches and tools use the pure parts (the scaler's policy) directly.

pub mod acu;
pub mod admin;
pub mod branch;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod files;
pub mod proxy;
pub mod runtime;
pub mod scaler;
pub mod storage;
pub mod tenants;
pub mod wire;
