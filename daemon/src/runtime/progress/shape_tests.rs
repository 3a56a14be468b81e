//! How ticks are shaped into the Event log: words only when new, the bar never backwards.
#![allow(clippy::unwrap_used)]

use super::*;

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn ev(tick: bool, phase: Phase, percent: u8, message: &str, ms: u64) -> Event {
    let mut e = if tick {
        Event::tick(phase, percent, message)
    } else {
        Event::new(phase, percent, message)
    };
    e.at = at(ms);
    e
}

/// Feeds `events` through [`shape`] as a Reporter does; returns what was kept.
fn log(events: Vec<Event>) -> Vec<Event> {
    let mut kept = Vec::new();
    for e in events {
        if let Some(e) = shape(&kept, e) {
            kept.push(e);
        }
    }
    kept
}

#[test]
fn a_pull_reporting_every_half_megabyte_words_a_line_only_every_few_seconds() {
    // 25 MB in 0.6 MB steps, one every 100 ms: 42 ticks over 4.2 s, then 10 more seconds.
    let mut events = vec![ev(false, Phase::Queued, 0, "Getting your server ready.", 0)];
    for i in 0..140u64 {
        let pct = u8::try_from(5 + i * 50 / 140).unwrap();
        let msg = format!("Pulling x: {} kB of 25 MB", 600 * (i + 1));
        events.push(ev(true, Phase::Pulling, pct, &msg, 100 * (i + 1)));
    }
    events.push(ev(
        false,
        Phase::Creating,
        20,
        "Preparing your server.",
        15_000,
    ));
    let kept = log(events);
    let worded: Vec<&Event> = kept.iter().filter(|e| !e.message.is_empty()).collect();
    // The queued line, the pull's first, one each 5 s (at 5.1 s and 10.1 s), the next phase.
    assert_eq!(worded.len(), 5, "{worded:#?}");
    assert_eq!(worded[1].message, "Pulling x: 600 kB of 25 MB");
    assert_eq!(worded[4].phase, Phase::Creating);
    // Every bar-only event moved the bar: none repeats the last percentage.
    let bars: Vec<u8> = kept.iter().map(|e| e.percent).collect();
    assert!(bars.windows(2).all(|w| w[0] <= w[1]), "{bars:?}");
    let pulling = kept.iter().filter(|e| e.phase == Phase::Pulling);
    assert!(
        pulling.clone().count() > 40,
        "the bar moves all along the pull"
    );
    assert!(
        kept.windows(2)
            .all(|w| !(w[1].message.is_empty() && w[1].percent == w[0].percent)),
        "an event that says nothing new"
    );
    // The bar never goes back: the next phase's 20 after a pull at 54 stays at 54.
    assert_eq!(kept.last().unwrap().percent, 54);
}

#[test]
fn the_boot_clock_words_the_same_line_once_and_then_every_few_seconds() {
    let mut events = vec![ev(
        false,
        Phase::WaitingForHttp,
        60,
        "Your server is starting up.",
        0,
    )];
    // Two ticks per second, the words changing once a second, the bar sometimes not at all.
    for i in 1..=24u64 {
        let msg = format!("Your server is starting up: {} s so far.", i / 2);
        let pct = u8::try_from(60 + i.min(10)).unwrap();
        events.push(ev(true, Phase::WaitingForHttp, pct, &msg, 500 * i));
    }
    let kept = log(events);
    let worded: Vec<&str> = kept
        .iter()
        .filter(|e| !e.message.is_empty())
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        worded,
        [
            "Your server is starting up.",
            "Your server is starting up: 5 s so far.",
            "Your server is starting up: 10 s so far.",
        ],
        "{kept:#?}"
    );
    let mut distinct = worded.clone();
    distinct.dedup();
    assert_eq!(distinct, worded, "no line twice");
}

#[test]
fn non_ticks_always_keep_their_words_and_terminal_events_their_percent() {
    let kept = log(vec![
        ev(
            false,
            Phase::WaitingForHttp,
            60,
            "Your server is starting up.",
            0,
        ),
        ev(
            false,
            Phase::WaitingForHttp,
            90,
            "post_start_cmd failed (exited with 1)",
            100,
        ),
        ev(false, Phase::WaitingForHttp, 90, "What went wrong: …", 200),
        ev(
            false,
            Phase::Failed,
            100,
            "Your server could not start.",
            300,
        ),
    ]);
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().all(|e| !e.message.is_empty()));
    assert_eq!(kept[3].percent, 100);
}
