//! Builds Berth's guest image: a Linux kernel plus an initramfs whose
//! `/init` is `berth-agent init`, for the `qemu` driver.
//!
//! Not built yet: this crate holds its place in the workspace until the
//! QEMU machines land (see the README's "Not there yet").
