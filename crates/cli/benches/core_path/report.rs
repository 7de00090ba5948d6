//! Statistics, the summary table and the machine description.

use super::*;

/// Latency statistics in microseconds (nearest-rank percentiles).
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) mean: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of(mut v: Vec<Duration>) -> Stats {
        v.sort_unstable();
        let n = v.len();
        let at = |p: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            v[rank - 1].as_secs_f64() * 1e6
        };
        let mean = if n == 0 {
            f64::NAN
        } else {
            v.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / n as f64
        };
        Stats {
            n,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            mean,
            max: v.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  mean {}  max {}",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.mean),
            us(self.max)
        )
    }
}

pub(crate) fn us(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1_000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// `value` in `unit`, with as many decimals as a figure of its size needs.
pub(crate) fn in_unit(value: f64, unit: &str) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0} {unit}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

pub(crate) enum Goal {
    None,
    AtMost(f64),
    AtLeast(f64),
    Zero,
}

pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) measured: String,
    pub(crate) value: f64,
    pub(crate) goal: Goal,
    pub(crate) unit: &'static str,
}

impl Row {
    pub(crate) fn info(figure: &str, measured: String) -> Row {
        Row {
            figure: figure.into(),
            measured,
            value: f64::NAN,
            goal: Goal::None,
            unit: "",
        }
    }
    pub(crate) fn at_most(figure: &str, value_us: f64, goal_us: f64) -> Row {
        Row {
            figure: figure.into(),
            measured: us(value_us),
            value: value_us,
            goal: Goal::AtMost(goal_us),
            unit: "µs",
        }
    }
    /// A figure in `unit` (ms, s, MiB, ...) that must stay at or below `goal`.
    pub(crate) fn at_most_in(figure: &str, value: f64, goal: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            measured: in_unit(value, unit),
            value,
            goal: Goal::AtMost(goal),
            unit,
        }
    }
    pub(crate) fn at_least(figure: &str, value: f64, goal: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            measured: format!("{value:.0} {unit}"),
            value,
            goal: Goal::AtLeast(goal),
            unit,
        }
    }
    pub(crate) fn exact_zero(figure: &str, count: u64) -> Row {
        Row {
            figure: figure.into(),
            measured: count.to_string(),
            value: count as f64,
            goal: Goal::Zero,
            unit: "",
        }
    }

    pub(crate) fn goal_text(&self) -> String {
        let v = |g: f64| {
            if self.unit == "µs" {
                us(g)
            } else {
                in_unit(g, self.unit)
            }
        };
        match self.goal {
            Goal::None => "-".into(),
            Goal::AtMost(g) => format!("≤ {}", v(g)),
            Goal::AtLeast(g) => format!("≥ {}", v(g)),
            Goal::Zero => "0".into(),
        }
    }

    pub(crate) fn verdict(&self) -> String {
        match self.goal {
            Goal::None => "-".into(),
            Goal::AtMost(g) => format!(
                "{:.2} {}",
                self.value / g,
                if self.value <= g { "PASS" } else { "MISS" }
            ),
            Goal::AtLeast(g) => format!(
                "{:.2} {}",
                self.value / g,
                if self.value >= g { "PASS" } else { "MISS" }
            ),
            Goal::Zero => (if self.value == 0.0 { "PASS" } else { "MISS" }).into(),
        }
    }
}

pub(crate) fn print_summary(rows: &[Row]) {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.measured.clone(),
                r.goal_text(),
                r.verdict(),
            ]
        })
        .collect();
    let header = ["figure", "measured", "goal", "ratio (measured/goal)"].map(String::from);
    let width = |i: usize| {
        cells
            .iter()
            .chain(std::iter::once(&header))
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2), width(3)];
    let line = |c: &[String; 4]| {
        let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
        format!(
            "| {} | {} | {} | {} |",
            pad(&c[0], widths[0]),
            pad(&c[1], widths[1]),
            pad(&c[2], widths[2]),
            pad(&c[3], widths[3])
        )
    };
    println!("{}", line(&header));
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 2),
        "-".repeat(widths[2] + 2),
        "-".repeat(widths[3] + 2)
    );
    for c in &cells {
        println!("{}", line(c));
    }
}

pub(crate) fn section(title: &str) {
    println!();
    println!("== {title}");
}

// ---------------------------------------------------------------------------------------
// Machine

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn print_machine(scratch: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let commit = head_commit().unwrap_or_else(|| "unknown".into());
    println!("== portcullis core-path benchmark");
    println!(
        "   machine: {} logical CPUs (nproc), {cpu}, Linux {kernel}",
        cores()
    );
    println!("   idle CPUs: {}", cpu_idle());
    println!("   commit:  {commit} (HEAD; the working tree may differ)");
    println!(
        "   temp dir: {} on {}",
        scratch.display(),
        filesystem_of(scratch)
    );
    println!(
        "   sections 1-5 run in this one process on a {}-worker tokio runtime (load generator, server and agent share the CPUs); section 8 runs the release binary as separate processes",
        cores()
    );
}

/// How this machine's idle CPUs wait: the cpuidle driver and governor, on a KVM guest with
/// the `haltpoll` driver how long a vCPU polls before it halts, and the CPU latency limit
/// processes ask for through PM QoS (at 0 the idle loop polls instead of halting; readable by
/// root only). A hand-off to a thread whose vCPU halted waits for the host to wake it, which
/// the sequential figures show.
fn cpu_idle() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let cpuidle = "/sys/devices/system/cpu/cpuidle";
    let driver = read(&format!("{cpuidle}/current_driver")).unwrap_or_else(|| "none".into());
    let governor = read(&format!("{cpuidle}/current_governor_ro"))
        .or_else(|| read(&format!("{cpuidle}/current_governor")))
        .unwrap_or_else(|| "none".into());
    let poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .map(|ns| format!(", guest_halt_poll_ns {ns}"))
        .unwrap_or_default();
    format!(
        "cpuidle driver {driver}, governor {governor}{poll}{}",
        cpu_latency_limit()
            .map(|limit| format!(", PM QoS CPU latency limit {limit}"))
            .unwrap_or_default()
    )
}

/// The CPU latency limit in force (`/dev/cpu_dma_latency`, the least any process holding it
/// open asked for): "none", or microseconds. `None` where it cannot be read. Opening it for
/// reading adds no limit of its own.
fn cpu_latency_limit() -> Option<String> {
    use std::io::Read as _;
    let mut value = [0u8; 4];
    std::fs::File::open("/dev/cpu_dma_latency")
        .and_then(|mut f| f.read_exact(&mut value))
        .ok()?;
    // The kernel's "no limit" is its default value, 2,000 s.
    Some(match i32::from_ne_bytes(value) {
        2_000_000_000.. => "none".to_owned(),
        us => format!("{us} µs"),
    })
}

/// The commit HEAD names, read from the repository's files (`.git/HEAD`, the ref it points
/// to, or `packed-refs`).
pub(crate) fn head_commit() -> Option<String> {
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let full = match head.strip_prefix("ref: ") {
        None => head.to_owned(),
        Some(name) => match std::fs::read_to_string(git.join(name)) {
            Ok(id) => id.trim().to_owned(),
            Err(_) => std::fs::read_to_string(git.join("packed-refs"))
                .ok()?
                .lines()
                .find_map(|l| {
                    l.split_once(' ')
                        .filter(|(_, r)| *r == name)
                        .map(|(id, _)| id.to_owned())
                })?,
        },
    };
    Some(full.chars().take(12).collect())
}

/// The mount (device and type) holding `path`, from /proc/mounts: the longest matching prefix.
pub(crate) fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, mount, _)| path.starts_with(mount))
        .max_by_key(|(_, mount, _)| mount.len())
        .map_or_else(
            || "unknown".into(),
            |(dev, mount, fs)| format!("{fs} ({dev} at {mount})"),
        )
}

/// User + system CPU seconds of this process so far.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(cpu_ticks(&stat)?.1 / clock_ticks())
}

/// A `/proc/PID/stat` line's command name and its user + system CPU, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU seconds of the whole machine (busy and in all, from /proc/stat) and of the PostgreSQL
/// processes (summed over /proc; a process that ended is no longer counted, and the bench's
/// connections stay open), so far: PostgreSQL runs on the same CPUs here, and its share of a
/// load is outside [`process_cpu_seconds`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineCpu {
    pub(crate) busy: f64,
    pub(crate) total: f64,
    pub(crate) postgres: f64,
}

pub(crate) fn machine_cpu_seconds() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq (guest time is inside user); steal, the time
    // the host ran something else, is neither this machine's work nor its idle time.
    let ticks: Vec<f64> = all
        .split_whitespace()
        .take(7)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        // A process may end between the listing and the read: it is skipped.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((name, ticks)) = cpu_ticks(&stat)
            && name.starts_with("postgres")
        {
            postgres += ticks;
        }
    }
    let ticks_per_second = clock_ticks();
    Some(MachineCpu {
        busy: (total - idle) / ticks_per_second,
        total: total / ticks_per_second,
        postgres: postgres / ticks_per_second,
    })
}

/// How often threads went to sleep and were woken so far, from /proc: on a VM each sleep of a
/// thread with nothing else to run may halt its vCPU, and waking it again costs the host a
/// reschedule, so these counts say how much of a sequential request's time can be wake-ups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedCounts {
    /// Voluntary context switches of this process's threads (summed over /proc/self/task; a
    /// thread that ended is no longer counted).
    pub(crate) process_sleeps: u64,
    /// Context switches of the whole machine (/proc/stat `ctxt`).
    pub(crate) machine_switches: u64,
    /// Rescheduling and function-call interrupts, summed over the CPUs (/proc/interrupts `RES`
    /// and `CAL`, x86's names): mostly one CPU waking a thread on another. `None` where the
    /// kernel names them otherwise.
    pub(crate) wake_ipis: Option<u64>,
}

impl SchedCounts {
    pub(crate) fn now() -> Option<SchedCounts> {
        let mut process_sleeps = 0;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            // A thread may end between the listing and the read: it is skipped.
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            process_sleeps += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let machine_switches = stat
            .lines()
            .find_map(|l| l.strip_prefix("ctxt "))?
            .trim()
            .parse()
            .ok()?;
        let wake_ipis = std::fs::read_to_string("/proc/interrupts")
            .ok()
            .and_then(|text| wake_ipis(&text));
        Some(SchedCounts {
            process_sleeps,
            machine_switches,
            wake_ipis,
        })
    }

    /// The counts per request between `self` (before) and `after`: this process's sleeps, the
    /// machine's switches, the wake-up interrupts where counted.
    fn per_request(&self, after: &SchedCounts, requests: usize) -> (f64, f64, Option<f64>) {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / requests.max(1) as f64;
        (
            per(self.process_sleeps, after.process_sleeps),
            per(self.machine_switches, after.machine_switches),
            self.wake_ipis.zip(after.wake_ipis).map(|(a, b)| per(a, b)),
        )
    }

    /// The per-request counts as a report line.
    pub(crate) fn line(&self, after: &SchedCounts, requests: usize) -> String {
        let (sleeps, switches, ipis) = self.per_request(after, requests);
        let mut line = format!(
            "{sleeps:.1} thread sleeps in this process, {switches:.1} context switches machine-wide"
        );
        if let Some(ipis) = ipis {
            line.push_str(&format!(", {ipis:.1} wake-up interrupts between CPUs"));
        }
        line
    }

    /// The same for the summary table: sleeps / switches / wake-up interrupts ("-" where not
    /// counted).
    pub(crate) fn short(&self, after: &SchedCounts, requests: usize) -> String {
        let (sleeps, switches, ipis) = self.per_request(after, requests);
        let ipis = ipis.map_or_else(|| "-".to_owned(), |n| format!("{n:.1}"));
        format!("{sleeps:.1} / {switches:.1} / {ipis}")
    }
}

/// The `RES` and `CAL` lines of /proc/interrupts, summed over their per-CPU columns.
fn wake_ipis(interrupts: &str) -> Option<u64> {
    let cpus = interrupts.lines().next()?.split_whitespace().count();
    let mut found = false;
    let mut sum = 0;
    for line in interrupts.lines() {
        let line = line.trim_start();
        let Some(rest) = line
            .strip_prefix("RES:")
            .or_else(|| line.strip_prefix("CAL:"))
        else {
            continue;
        };
        found = true;
        sum += rest
            .split_whitespace()
            .take(cpus)
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    found.then_some(sum)
}

/// Clock ticks per second for /proc times (asked once, before any measurement).
pub(crate) fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
