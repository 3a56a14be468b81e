//! Image garbage collection, as the kubelet does it: when the disk holding Docker's root is
//! used above a high mark, images no container uses (berthd's or not) and no pull is fetching
//! are removed, least recently used first, until usage is down to a low mark.
//!
//! Only berth's images are ever removed: those this berthd pulled or started a server of since
//! it started, and those matching `[images] gc_images` (globs as `allowed_images`; empty by
//! default). Another tool's images on the same engine stay, however unused; a restart forgets
//! which images were berth's, so after one only `gc_images` ones go until they are used again.
//!
//! "Used" is what berthd saw: an image's last use is the last collection pass that found a
//! container of it, or that followed a Start of it (a server that lived and went between two
//! passes counts as used); an image never seen in use goes first, oldest first. An image first seen
//! less than `min_age` ago is kept (it may have just been pulled for a spawn that has not made
//! its container yet). Removal never forces: Docker itself refuses an image a container uses
//! or one with child images, and that refusal is logged and the image skipped. The first pass
//! runs one interval after start, so a short-lived berthd never removes anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEngine, EngineError, ImageSummary};
use crate::runtime::{Error, Runtime};

/// When to collect; filled from `[images]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// Disk usage that starts a collection; 0 = never collect.
    pub high_percent: u8,
    /// Disk usage a collection stops at.
    pub low_percent: u8,
    /// Time between passes.
    pub interval: Duration,
    /// Images first seen more recently are kept.
    pub min_age: Duration,
    /// Globs of references GC may remove besides berth's own (`[images] gc_images`).
    pub images: Vec<String>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            high_percent: crate::config::DEFAULT_GC_HIGH_PERCENT,
            low_percent: crate::config::DEFAULT_GC_LOW_PERCENT,
            interval: Duration::from_secs(crate::config::DEFAULT_GC_INTERVAL_SECONDS),
            min_age: Duration::from_secs(crate::config::DEFAULT_GC_MIN_AGE_SECONDS),
            images: Vec::new(),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    /// Disk usage (percent) before, when it could be read.
    pub usage_before: Option<f64>,
    /// Disk usage after.
    pub usage_after: Option<f64>,
    /// Images removed, in the order they went (their references, or the id of an untagged one).
    pub removed: Vec<String>,
    /// Images whose references were removed but which Docker keeps (a parent of another
    /// image): untagged, no bytes freed.
    pub untagged: Vec<String>,
    /// Images Docker refused to remove (a child image, a container made meanwhile).
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Use {
    first_seen: SystemTime,
    last_used: Option<SystemTime>,
}

#[derive(Default)]
struct Seen {
    by_id: HashMap<String, Use>,
    /// Images berthd pulled or started a server of (berth's, which GC may remove).
    ours: HashSet<String>,
    /// Images started since the last pass.
    started: HashSet<String>,
}

/// What berthd has seen of each image, by id.
#[derive(Default)]
pub struct ImageUse {
    seen: Mutex<Seen>,
}

impl ImageUse {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that berthd pulled image `id` or started a server of it: the image is berth's,
    /// and used at the next pass even if its server is gone by then.
    pub fn note(&self, id: &str, started: bool) {
        let mut seen = self.lock();
        seen.ours.insert(id.to_owned());
        if started {
            seen.started.insert(id.to_owned());
        }
    }

    /// Records this pass's sighting: every image seen, those in `used` or started since the
    /// last pass used now. Images gone from the engine are forgotten.
    fn observe(&self, images: &[ImageSummary], used: &HashSet<String>, now: SystemTime) {
        let mut seen = self.lock();
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        seen.by_id.retain(|id, _| present.contains(id.as_str()));
        seen.ours.retain(|id| present.contains(id.as_str()));
        let started = std::mem::take(&mut seen.started);
        for i in images {
            let u = seen.by_id.entry(i.id.clone()).or_insert(Use {
                first_seen: now,
                last_used: None,
            });
            if used.contains(&i.id) || started.contains(&i.id) {
                u.last_used = Some(now);
            }
        }
    }

    /// Whether GC may remove `image` at all: berth's own, or matching one of `globs`.
    fn removable(&self, image: &ImageSummary, globs: &[String]) -> bool {
        self.lock().ours.contains(&image.id)
            || image.refs.iter().any(|r| {
                let full = crate::spec::normalize_image(r);
                globs.iter().any(|g| {
                    crate::policy::glob_match(&crate::spec::normalize_image_glob(g), &full)
                })
            })
    }

    /// The images that may go, least recently used first.
    fn candidates(
        &self,
        images: &[ImageSummary],
        keep: impl Fn(&ImageSummary) -> bool,
        now: SystemTime,
        min_age: Duration,
    ) -> Vec<ImageSummary> {
        let seen = self.lock();
        let mut out: Vec<(Option<SystemTime>, SystemTime, i64, ImageSummary)> = images
            .iter()
            .filter(|i| !keep(i))
            .filter_map(|i| {
                let u = seen.by_id.get(&i.id)?;
                let old = now.duration_since(u.first_seen).unwrap_or_default() >= min_age;
                old.then(|| (u.last_used, u.first_seen, i.created, i.clone()))
            })
            .collect();
        out.sort_by_key(|a| (a.0, a.1, a.2));
        out.into_iter().map(|(_, _, _, i)| i).collect()
    }
}

/// Sets the DiskPressure condition while the Docker root's disk is above the image GC high mark
/// (`usage` in percent), so the hub sees why images go.
pub(in crate::runtime) fn report_pressure(
    conditions: &mut [crate::capacity::Condition],
    usage: Option<f64>,
    cfg: &GcConfig,
) {
    let Some(u) = usage else { return };
    if cfg.high_percent == 0 || u < f64::from(cfg.high_percent) {
        return;
    }
    let Some(c) = conditions.iter_mut().find(|c| c.kind == "DiskPressure") else {
        return;
    };
    let note = format!(
        "Docker root disk {u:.0}% used, above the image GC high mark of {}%: unused images are being removed down to {}%",
        cfg.high_percent, cfg.low_percent
    );
    if c.status != "True" {
        c.status = "True";
        c.reason = "ImageGCHighMark".to_owned();
        c.message = note;
    } else {
        c.message = format!("{}; {note}", c.message);
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// One collection pass with `cfg`'s marks; see the module docs.
    pub async fn collect_images(&self, cfg: &GcConfig) -> Result<GcReport, Error> {
        let engine = &self.inner.engine;
        let images = engine.image_summaries().await?;
        let used: HashSet<String> = engine.images_in_use().await?.into_iter().collect();
        let now = SystemTime::now();
        let record = &self.inner.image_use;
        record.observe(&images, &used, now);
        let Some(root) = self.docker_root().await else {
            return Ok(GcReport::default());
        };
        let root = std::path::PathBuf::from(root);
        let mut report = GcReport {
            usage_before: crate::capacity::usage_of(&root),
            ..GcReport::default()
        };
        report.usage_after = report.usage_before;
        let Some(before) = report.usage_before else {
            return Ok(report);
        };
        if cfg.high_percent == 0 || before < f64::from(cfg.high_percent) {
            return Ok(report);
        }
        let pulling: HashSet<String> = self.pulling().into_iter().collect();
        // Asked before `candidates`, which holds the record's lock while it calls `keep`.
        let removable: HashSet<&str> = images
            .iter()
            .filter(|i| record.removable(i, &cfg.images))
            .map(|i| i.id.as_str())
            .collect();
        let keep = |i: &ImageSummary| {
            used.contains(&i.id)
                || !removable.contains(i.id.as_str())
                || i.refs
                    .iter()
                    .any(|r| pulling.contains(&crate::spec::normalize_image(r)))
        };
        let candidates = record.candidates(&images, keep, now, cfg.min_age);
        tracing::warn!(
            usage_percent = before,
            high_percent = cfg.high_percent,
            low_percent = cfg.low_percent,
            candidates = candidates.len(),
            "disk usage above the image GC high mark: removing unused images, least recently used first"
        );
        for image in candidates {
            if report
                .usage_after
                .is_some_and(|u| u <= f64::from(cfg.low_percent))
            {
                break;
            }
            let name = image
                .refs
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone());
            match self.remove_all_refs(&image).await {
                // Docker keeps an image other images are built on: only its names went.
                Ok(()) if matches!(self.inner.engine.image(&image.id).await, Ok(Some(_))) => {
                    tracing::info!(image = %name, id = %image.id, "image GC untagged an unused image (Docker keeps it for the images built on it; no bytes freed)");
                    report.untagged.push(name);
                }
                Ok(()) => {
                    tracing::info!(image = %name, id = %image.id, bytes = image.size, "image GC removed an unused image");
                    report.removed.push(name);
                }
                Err(EngineError::Conflict { message }) => {
                    tracing::info!(image = %name, reason = %message, "image GC skipped an image Docker keeps");
                    report.refused.push(name);
                }
                Err(e) => return Err(e.into()),
            }
            report.usage_after = crate::capacity::usage_of(&root);
        }
        tracing::info!(
            usage_before = before,
            usage_after = report.usage_after,
            removed = report.removed.len(),
            untagged = report.untagged.len(),
            "image GC pass done"
        );
        Ok(report)
    }

    /// Notes that `reference` was pulled by berthd (a prepull): the image is berth's.
    pub async fn note_pulled(&self, reference: &str) {
        if let Ok(Some(image)) = self.inner.engine.image(reference).await {
            self.inner.image_use.note(&image.id, false);
        }
    }

    async fn remove_all_refs(&self, image: &ImageSummary) -> Result<(), EngineError> {
        if image.refs.is_empty() {
            return self.inner.engine.remove_image(&image.id).await;
        }
        for r in &image.refs {
            self.inner.engine.remove_image(r).await?;
        }
        Ok(())
    }
}

/// Collects images every `cfg.interval` (the first pass after one interval) until `shutdown`.
pub async fn run<E: ContainerEngine>(rt: Runtime<E>, cfg: GcConfig, shutdown: CancellationToken) {
    if cfg.high_percent == 0 {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(cfg.interval) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = rt.collect_images(&cfg).await {
            tracing::warn!(error = %e, "image GC pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, created: i64) -> ImageSummary {
        ImageSummary {
            id: id.into(),
            refs: vec![format!("x/{id}:1")],
            size: 1,
            created,
        }
    }

    #[test]
    fn the_high_mark_is_disk_pressure() {
        let cond = |status: &'static str| crate::capacity::Condition {
            kind: "DiskPressure",
            status,
            reason: "SufficientDisk".into(),
            message: String::new(),
        };
        let cfg = GcConfig::default();
        let mut c = [cond("False")];
        report_pressure(&mut c, Some(84.0), &cfg);
        assert_eq!(c[0].status, "False");
        report_pressure(&mut c, Some(90.0), &cfg);
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            ("True", "ImageGCHighMark")
        );
        assert!(
            c[0].message.contains("90%") && c[0].message.contains("85%"),
            "{}",
            c[0].message
        );
        let mut off = [cond("False")];
        let none = GcConfig {
            high_percent: 0,
            ..cfg
        };
        report_pressure(&mut off, Some(99.0), &none);
        assert_eq!(off[0].status, "False");
    }

    #[test]
    fn usage_is_counted_as_df_counts_it() {
        let u = crate::capacity::usage_of(std::path::Path::new("/")).expect("statvfs of /");
        let df = std::process::Command::new("df")
            .args(["--output=pcent", "/"])
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&df.stdout);
        let pcent: f64 = text
            .lines()
            .nth(1)
            .and_then(|l| l.trim().trim_end_matches('%').parse().ok())
            .expect("df prints a percentage");
        // df rounds up, and the disk may change between the two readings.
        assert!((u - pcent).abs() <= 2.0, "{u} vs df's {pcent}");
    }

    #[test]
    fn never_used_go_first_then_least_recently_used_and_used_ones_stay() {
        let u = ImageUse::default();
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let images = vec![
            img("a", 3),
            img("b", 2),
            img("c", 1),
            img("d", 0),
            img("new", 0),
        ];
        let used = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<HashSet<_>>();
        u.observe(&images[..4], &used(&[]), t(100));
        u.observe(&images[..4], &used(&["c"]), t(200));
        u.observe(&images[..4], &used(&["a", "b"]), t(300));
        u.observe(&images[..4], &used(&["b"]), t(400));
        u.observe(&images, &used(&["b"]), t(500));
        let in_use = used(&["b"]);
        let order: Vec<String> = u
            .candidates(
                &images,
                |i| in_use.contains(&i.id),
                t(500),
                Duration::from_secs(60),
            )
            .into_iter()
            .map(|i| i.id)
            .collect();
        // d never used; c used at 200; a at 300; b in use; "new" seen too recently.
        assert_eq!(order, ["d", "c", "a"]);
    }

    #[test]
    fn a_server_started_between_two_passes_counts_as_used_at_the_next() {
        let u = ImageUse::default();
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let images = vec![img("a", 0), img("b", 0)];
        let none = HashSet::new();
        u.observe(&images, &none, t(100));
        // A server of b lives and goes between the passes at 100 and 200: no container of it
        // is left for the pass to see. Mutation check: drop `started` from `observe` and b
        // counts as never used, going before a.
        u.note("b", true);
        u.observe(&images, &none, t(200));
        u.observe(&images, &none, t(300));
        let order: Vec<String> = u
            .candidates(&images, |_| false, t(300), Duration::ZERO)
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(order, ["a", "b"]);
    }

    #[test]
    fn only_berths_images_and_listed_ones_may_be_removed() {
        let u = ImageUse::default();
        let mut foreign = img("f", 0);
        foreign.refs = vec!["postgres:16".into()];
        let mut listed = img("l", 0);
        listed.refs = vec!["quay.io/jupyter/base-notebook:2025-01-06".into()];
        let pulled = img("p", 0);
        u.note("p", false);
        let globs = vec!["quay.io/jupyter/*".to_owned()];
        assert!(!u.removable(&foreign, &globs), "another tool's image stays");
        assert!(u.removable(&listed, &globs));
        assert!(!u.removable(&listed, &[]), "the default list is empty");
        assert!(u.removable(&pulled, &[]), "what berth pulled is berth's");
    }
}
