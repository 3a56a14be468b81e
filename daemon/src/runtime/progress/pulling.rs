//! How a pull shows on a spawn's progress bar: the share of the bar it moves through, and
//! its bytes and layers in words. The pulls themselves are `images/pull.rs`'s.

/// Share of the progress bar a pull moves through: from this percentage...
pub const PULL_FROM: u8 = 5;
/// ...to this one: most of the bar, as a pull is most of the wait when there is one (the bar
/// then stays there through creating, as it never goes back, until the boot moves it on from
/// 60).
pub const PULL_TO: u8 = 55;
/// How far a pull is. Bytes are compressed layer bytes as the registry serves them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullProgress {
    /// The image's full reference.
    pub image: String,
    /// Downloaded so far; never decreases.
    pub bytes_done: u64,
    /// Sum of the sizes of the layers whose size is known (Docker tells it when a layer's
    /// download begins).
    pub bytes_total: u64,
    /// Layers downloaded and unpacked, or already on the node.
    pub layers_done: u32,
    /// Layers of the image.
    pub layers_total: u32,
    /// 0-1, never decreasing.
    pub fraction: f64,
}

impl PullProgress {
    /// The percentage of the spawn's bar: within [`PULL_FROM`]..=[`PULL_TO`].
    pub fn percent(&self) -> u8 {
        let span = f64::from(PULL_TO - PULL_FROM);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let step = (self.fraction.clamp(0.0, 1.0) * span).floor() as u8;
        PULL_FROM + step
    }

    /// "Pulling <image>: 312 MB of 1.2 GB (3 of 9 layers)".
    pub fn message(&self) -> String {
        if self.layers_total == 0 {
            return format!("Pulling {}: asking the registry", self.image);
        }
        let layers = format!("{} of {} layers", self.layers_done, self.layers_total);
        if self.bytes_total == 0 {
            return format!("Pulling {} ({layers})", self.image);
        }
        format!(
            "Pulling {}: {} of {} ({layers})",
            self.image,
            human_bytes(self.bytes_done),
            human_bytes(self.bytes_total)
        )
    }
}

/// Bytes in decimal units as Docker shows them: `312 MB`, `1.2 GB`, `950 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}
