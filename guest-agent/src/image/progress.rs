//! What a pull or push is doing, blob by blob, for progress displays.

use super::digest::Digest;

/// One step of a pull or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The reference resolved to this digest (pull), or the manifest was
    /// stored under it (push).
    Resolved {
        /// The manifest or index digest.
        digest: Digest,
    },
    /// A layer's (or config's) state.
    Layer {
        /// The blob's digest.
        digest: Digest,
        /// What is happening to it.
        status: LayerStatus,
    },
}

/// One blob's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerStatus {
    /// Already where it is going: unpacked in the store, or in the
    /// registry's repository.
    AlreadyExists,
    /// Bytes downloaded so far of the total.
    Downloading {
        /// Downloaded.
        done: u64,
        /// Of.
        total: u64,
    },
    /// Being unpacked.
    Extracting,
    /// Pulled and unpacked.
    Complete,
    /// Bytes uploaded so far of the total.
    Uploading {
        /// Uploaded.
        done: u64,
        /// Of.
        total: u64,
    },
    /// Mounted from another repository of the same registry.
    Mounted {
        /// The repository it came from.
        from: String,
    },
    /// Uploaded.
    Pushed,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Resolved { digest } => write!(f, "digest: {digest}"),
            Progress::Layer { digest, status } => {
                let short = &digest.hex()[..12];
                match status {
                    LayerStatus::AlreadyExists => write!(f, "{short}: already exists"),
                    LayerStatus::Downloading { done, total } => {
                        write!(f, "{short}: downloading {}", Bytes(*done, *total))
                    }
                    LayerStatus::Extracting => write!(f, "{short}: extracting"),
                    LayerStatus::Complete => write!(f, "{short}: pull complete"),
                    LayerStatus::Uploading { done, total } => {
                        write!(f, "{short}: pushing {}", Bytes(*done, *total))
                    }
                    LayerStatus::Mounted { from } => write!(f, "{short}: mounted from {from}"),
                    LayerStatus::Pushed => write!(f, "{short}: pushed"),
                }
            }
        }
    }
}

/// `done/total` in human units.
struct Bytes(u64, u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn human(n: u64) -> String {
            const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
            let mut value = n as f64;
            let mut unit = 0;
            while value >= 1000.0 && unit < UNITS.len() - 1 {
                value /= 1000.0;
                unit += 1;
            }
            if unit == 0 {
                format!("{n}B")
            } else {
                format!("{value:.1}{}", UNITS[unit])
            }
        }
        write!(f, "{}/{}", human(self.0), human(self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_docker() {
        let digest = Digest::of(b"layer");
        let line = Progress::Layer {
            digest: digest.clone(),
            status: LayerStatus::Downloading {
                done: 1_500_000,
                total: 2_000,
            },
        }
        .to_string();
        assert_eq!(
            line,
            format!("{}: downloading 1.5MB/2.0kB", &digest.hex()[..12])
        );
        let line = Progress::Layer {
            digest,
            status: LayerStatus::Uploading {
                done: 12,
                total: 999,
            },
        }
        .to_string();
        assert!(line.ends_with("pushing 12B/999B"), "{line}");
    }
}
