//! Measuring helpers shared by the benchmark (`notifyhub-bench`) and soak (`notifyhub-soak`)
//! programs: percentiles of latency samples, a process's resident memory and open fds from
//! `/proc`, the fd limit, and a table of figures printed as ratios against a baseline measured
//! in the same run (issue 8: on a shared machine absolute figures alone mean little).
//!
//! ```no_run
//! use std::time::Duration;
//! use notifyhub_tests::measure::{Latencies, RatioTable, proc_stats};
//!
//! let mut hub = Latencies::new();
//! hub.push(Duration::from_micros(120));
//! let mut table = RatioTable::new("ingest", "datagrams/s", true);
//! table.row("1 socket", 900_000.0, 810_000.0);
//! table.print();
//! let stats = proc_stats(std::process::id()).unwrap();
//! println!("{} bytes resident, {} fds", stats.rss_bytes, stats.open_fds);
//! ```

use std::fmt;
use std::io;
use std::time::Duration;

/// Latency samples; [`Latencies::summary`] gives the percentiles.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Percentiles of the samples so far, or `None` when there are none.
    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples)
    }
}

impl Extend<Duration> for Latencies {
    fn extend<I: IntoIterator<Item = Duration>>(&mut self, iter: I) {
        self.samples.extend(iter);
    }
}

/// Percentiles of a set of durations (nearest-rank: each is one of the samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample.
    pub min: Duration,
    /// Median (50th percentile).
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Percentiles of `samples` (any order), or `None` when it is empty.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Self {
            count: sorted.len(),
            min: sorted[0],
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
        })
    }
}

impl fmt::Display for Summary {
    /// `p50 12.3 µs, p99 45.6 µs, max 78.9 µs (n = 1000)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}, p99 {}, max {} (n = {})",
            micros(self.p50),
            micros(self.p99),
            micros(self.max),
            self.count
        )
    }
}

/// The nearest-rank `p`-th percentile (0–100) of `sorted`, which must be sorted ascending.
///
/// # Panics
/// When `sorted` is empty or `p` is outside 0–100.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!((0.0..=100.0).contains(&p), "percentile {p} outside 0..=100");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The spread of repeated measurements of one figure: smallest, median and largest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Smallest value.
    pub min: f64,
    /// Median (for an even count, the upper of the two middle values).
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, or `None` when it is empty or holds a NaN.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            min: sorted[0],
            median: sorted[sorted.len() / 2],
            max: sorted[sorted.len() - 1],
        })
    }
}

impl fmt::Display for Spread {
    /// `0.84 (0.80–0.87)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} ({:.2}–{:.2})", self.median, self.min, self.max)
    }
}

/// `d` in microseconds with one decimal, e.g. `12.3 µs`.
pub fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// What `/proc/PID` says about a process at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// Resident set size in bytes (`VmRSS` of `/proc/PID/status`).
    pub rss_bytes: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub open_fds: usize,
    /// Threads (`Threads` of `/proc/PID/status`).
    pub threads: usize,
}

/// Resident memory, open fds and threads of process `pid`.
///
/// # Errors
/// When `/proc/PID` cannot be read (no such process, or another user's fds without privilege),
/// or `status` lacks `VmRSS` (a zombie).
pub fn proc_stats(pid: u32) -> io::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("/proc/{pid}/status has no {name}"),
                )
            })
    };
    let rss_bytes = field("VmRSS")? * 1024;
    let threads = field("Threads")? as usize;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(ProcStats {
        rss_bytes,
        open_fds,
        threads,
    })
}

/// CPU time process `pid` has used so far, user and system together (`utime` + `stime` of
/// `/proc/PID/stat`, in the kernel's fixed 100 Hz `USER_HZ` ticks, so 10 ms resolution).
///
/// # Errors
/// When `/proc/PID/stat` cannot be read or parsed.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .into_iter()
        .flatten()
        .map(|field| field.parse::<u64>().ok())
        .sum::<Option<u64>>()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: {stat:?}"),
            )
        })?;
    Ok(Duration::from_millis(ticks * 10))
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit; as root
/// the hard limit is raised too). Children spawned afterwards inherit it. Returns the soft limit
/// now in force, which is below `want` when the hard limit did not allow more.
///
/// # Errors
/// When `setrlimit` fails.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    let wanted = Rlimit {
        current: Some(want),
        maximum: Some(hard.max(want)),
    };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return Ok(want);
    }
    let capped = Rlimit {
        current: Some(hard.min(want)),
        maximum: current.maximum,
    };
    setrlimit(Resource::Nofile, capped)?;
    Ok(hard.min(want))
}

/// A table of figures, each beside a baseline measured in the same run, printed with their
/// ratio `measured / baseline`.
///
/// `higher_is_better` says how to read the ratio (throughput: `true`, latency: `false`); it is
/// printed in the header so that a reader of the output knows which way is good.
#[derive(Clone, Debug)]
pub struct RatioTable {
    title: String,
    unit: String,
    higher_is_better: bool,
    rows: Vec<(String, f64, f64)>,
}

impl RatioTable {
    /// An empty table titled `title`; both columns are in `unit` (e.g. `datagrams/s`, `µs`).
    pub fn new(title: &str, unit: &str, higher_is_better: bool) -> Self {
        Self {
            title: title.to_string(),
            unit: unit.to_string(),
            higher_is_better,
            rows: Vec::new(),
        }
    }

    /// Adds a row: `name`, the baseline's figure and ours, both in the table's unit.
    pub fn row(&mut self, name: &str, baseline: f64, measured: f64) {
        self.rows.push((name.to_string(), baseline, measured));
    }

    /// The rows so far: `(name, baseline, measured)`.
    pub fn rows(&self) -> &[(String, f64, f64)] {
        &self.rows
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{self}");
    }
}

impl fmt::Display for RatioTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let better = if self.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        writeln!(
            f,
            "== {} ({}; ratio = ours / baseline, {better})",
            self.title, self.unit
        )?;
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(8);
        writeln!(
            f,
            "{:<width$} {:>14} {:>14} {:>8}",
            "scenario", "baseline", "ours", "ratio"
        )?;
        for (name, baseline, measured) in &self.rows {
            writeln!(
                f,
                "{name:<width$} {:>14} {:>14} {:>8.2}",
                figure(*baseline),
                figure(*measured),
                measured / baseline
            )?;
        }
        Ok(())
    }
}

/// A figure with three significant digits and no exponent (`812000`, `45.6`, `0.123`).
fn figure(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    let decimals = (2 - magnitude).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let samples: Vec<Duration> = [5, 1, 4, 2, 3].map(Duration::from_micros).to_vec();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.count, 5);
        assert_eq!(s.min, Duration::from_micros(1));
        assert_eq!(s.p50, Duration::from_micros(3));
        assert_eq!(s.p99, Duration::from_micros(5));
        assert_eq!(s.max, Duration::from_micros(5));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn spread_and_figures() {
        let s = Spread::of(&[0.9, 0.7, 0.8]).unwrap();
        assert_eq!((s.min, s.median, s.max), (0.7, 0.8, 0.9));
        assert_eq!(s.to_string(), "0.80 (0.70–0.90)");
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(figure(812_345.0), "812345");
        assert_eq!(figure(45.67), "45.7");
        assert_eq!(figure(0.1234), "0.123");
    }

    #[test]
    fn own_process_stats() {
        let stats = proc_stats(std::process::id()).unwrap();
        assert!(stats.rss_bytes > 0);
        assert!(stats.open_fds >= 3, "stdin, stdout, stderr: {stats:?}");
        assert!(stats.threads >= 1);
        let (read, write) = crate::pipe();
        let more = proc_stats(std::process::id()).unwrap();
        assert!(more.open_fds >= stats.open_fds + 2, "{stats:?} → {more:?}");
        drop((read, write));
    }

    #[test]
    fn table_prints_ratios() {
        let mut t = RatioTable::new("ingest", "datagrams/s", true);
        t.row("1 socket", 1000.0, 800.0);
        let text = t.to_string();
        assert!(text.contains("higher is better"), "{text}");
        assert!(text.lines().nth(2).unwrap().ends_with("0.80"), "{text}");
    }
}
