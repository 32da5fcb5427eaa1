//! Readings from /proc: a process's CPU time and memory, the kernel's TCP
//! socket memory, the machine; and the open-file limit.

use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft open-file limit to the hard one and returns it. Children
/// inherit it, so the backend and the proxy get it too.
pub fn raise_nofile() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("bench: cannot raise RLIMIT_NOFILE: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15, so 12th and 13th
    // after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// A line of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// [`status_kib`] summed over processes (nginx's master and workers).
pub fn status_kib_all(pids: &[u32], key: &str) -> Option<u64> {
    pids.iter().map(|&p| status_kib(p, key)).sum()
}

/// [`cpu_seconds`] summed over processes.
fn cpu_seconds_all(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// The kernel's TCP socket buffer memory (all processes), in bytes, from
/// the `mem` pages of /proc/net/sockstat.
pub fn tcp_mem_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            let pages: u64 = words.next()?.parse().ok()?;
            return Some(pages * rustix::param::page_size() as u64);
        }
    }
    None
}

/// The kernel's slab memory (`Slab` of /proc/meminfo, system-wide), in
/// bytes: where socket structures live, which sockstat's `mem` leaves out.
pub fn slab_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU used by one process (or a few, together) over a window.
pub struct CpuMeter {
    pids: Vec<u32>,
    cpu0: f64,
    t0: Instant,
}

/// What a [`CpuMeter`] saw.
#[derive(Clone, Copy, Debug)]
pub struct CpuUse {
    pub cpu_seconds: f64,
    pub wall: Duration,
}

impl CpuUse {
    /// Percent of one core.
    pub fn percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.wall.as_secs_f64()
    }

    /// Microseconds of CPU per one of `frames` (per one, for none).
    pub fn us_per(&self, frames: u64) -> f64 {
        self.cpu_seconds * 1e6 / frames.max(1) as f64
    }
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter::start_all(vec![pid])
    }

    pub fn start_all(pids: Vec<u32>) -> CpuMeter {
        CpuMeter {
            cpu0: cpu_seconds_all(&pids).unwrap_or(0.0),
            pids,
            t0: Instant::now(),
        }
    }

    pub fn read(&self) -> CpuUse {
        CpuUse {
            cpu_seconds: cpu_seconds_all(&self.pids).unwrap_or(self.cpu0) - self.cpu0,
            wall: self.t0.elapsed(),
        }
    }
}

/// What the machine is, for the header of every run.
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or("?".into(), |(_, v)| v.trim().to_owned());
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_gib: mem_kib as f64 / (1024.0 * 1024.0),
        }
    }

    pub fn describe(&self, nofile: u64) -> String {
        format!(
            "machine: {} cores, {}, {:.1} GiB; open-file limit {nofile}; load average {}",
            self.nproc,
            self.cpu_model,
            self.mem_total_gib,
            loadavg()
        )
    }
}
