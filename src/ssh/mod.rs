//! The I/O layer. Everything that touches the file system, processes or the network lives
//! below this module; the layers above it are pure.

pub mod local;
