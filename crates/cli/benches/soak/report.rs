//! Figures for the report: percentiles, the memory trend, and the PASS/FAIL lines.

use crate::traffic::Sample;

/// The `p`-th percentile (0–100, nearest rank) of unsorted microsecond latencies.
pub(crate) fn percentile(values: &mut [u32], p: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Microseconds as `812 µs`, `4.1 ms` or `1.20 s`.
pub(crate) fn us(v: Option<u32>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1_000 => format!("{v} µs"),
        Some(v) if v < 1_000_000 => format!("{:.1} ms", f64::from(v) / 1_000.0),
        Some(v) => format!("{:.2} s", f64::from(v) / 1_000_000.0),
    }
}

/// Least-squares slope of `(x, y)` points, in y per x.
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then_some(sxy / sxx)
}

/// Samples averaged at the start and the end of a window.
const EDGE_SAMPLES: usize = 5;
/// The end may exceed the start (after warm-up) by this much at most: the larger of an
/// absolute and a relative allowance.
pub(crate) const RSS_ALLOWANCE_MIB: f64 = 8.0;
pub(crate) const RSS_ALLOWANCE_SHARE: f64 = 0.25;

/// One process's memory over the traffic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// Mean of the first samples after the warm-up.
    pub(crate) start: f64,
    pub(crate) peak: f64,
    /// Mean of the last samples.
    pub(crate) end: f64,
    /// Least-squares slope over the second half of the traffic, MiB per minute.
    pub(crate) slope_per_min: Option<f64>,
    pub(crate) allowance: f64,
}

impl Memory {
    pub(crate) fn of(
        samples: &[Sample],
        warmup_s: f64,
        half_s: f64,
        pick: fn(&Sample) -> f64,
    ) -> Option<Memory> {
        let after: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= warmup_s).collect();
        if after.len() < EDGE_SAMPLES {
            return None;
        }
        let mean = |xs: &[&Sample]| xs.iter().map(|s| pick(s)).sum::<f64>() / xs.len() as f64;
        let start = mean(&after[..EDGE_SAMPLES]);
        let end = mean(&after[after.len() - EDGE_SAMPLES..]);
        let peak = samples.iter().map(pick).fold(f64::MIN, f64::max);
        let second_half: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.at_s >= half_s)
            .map(|s| (s.at_s / 60.0, pick(s)))
            .collect();
        Some(Memory {
            start,
            peak,
            end,
            slope_per_min: slope(&second_half),
            allowance: RSS_ALLOWANCE_MIB.max(RSS_ALLOWANCE_SHARE * start),
        })
    }

    pub(crate) fn flat(&self) -> bool {
        self.end - self.start <= self.allowance
    }
}

/// One check of the run.
pub(crate) struct Check {
    pub(crate) pass: bool,
    pub(crate) what: String,
    pub(crate) figures: String,
}

pub(crate) fn check(pass: bool, what: impl Into<String>, figures: impl Into<String>) -> Check {
    Check {
        pass,
        what: what.into(),
        figures: figures.into(),
    }
}

pub(crate) fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// A Markdown table with its columns padded to the widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(width[i] - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    println!(
        "|{}|",
        width
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        line(row.clone());
    }
}
