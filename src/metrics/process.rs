//! The standard `process_*` metrics, read from `/proc/self` at each scrape
//! (Linux only; elsewhere, or when `/proc` cannot be read, they are left
//! out rather than reported as zero).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered once; reads nothing until a scrape asks.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

/// One reading of the process's state.
#[derive(Debug, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
    start_time_seconds: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(r) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(r.resident_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Some(r.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let start = ConstGauge::new(r.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .and_then(|n| i64::try_from(n).ok());
    let mut r = parse(&stat, &statm, &boot, ticks, page)?;
    // The listing's own descriptor was open while it was read.
    r.open_fds = i64::try_from(open_fds.saturating_sub(1)).ok()?;
    r.max_fds = max_fds;
    Some(r)
}

/// The pure part: `/proc/self/stat`, `/proc/self/statm` and `/proc/stat`
/// as text, with the clock tick rate and the page size.
fn parse(stat: &str, statm: &str, boot: &str, ticks: f64, page: f64) -> Option<Reading> {
    // The command name (field 2) is in parentheses and may hold spaces: the
    // fields are counted from after its closing one, from field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu_seconds = (field(14)? + field(15)?) / ticks;
    let start_ticks = field(22)?;
    let btime: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let resident_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reading {
        cpu_seconds,
        resident_bytes: (resident_pages * page) as i64,
        open_fds: 0,
        max_fds: None,
        start_time_seconds: btime + start_ticks / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        // A command name with spaces and a parenthesis, as a process may pick.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 1000 123456 789 18446744073709551615";
        let statm = "5000 789 300 10 0 600 0\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let r = parse(stat, statm, boot, 100.0, 4096.0).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.resident_bytes, 789 * 4096);
        assert_eq!(r.start_time_seconds, 1_700_000_010.0);
        assert!(parse("garbage", statm, boot, 100.0, 4096.0).is_none());
        assert!(parse(stat, "", boot, 100.0, 4096.0).is_none());
    }

    #[test]
    fn this_process_is_read() {
        let r = read().expect("/proc/self is readable on Linux");
        assert!(r.cpu_seconds >= 0.0);
        assert!(r.resident_bytes > 0);
        assert!(r.open_fds >= 3);
        assert!(r.max_fds.is_some_and(|m| m >= r.open_fds));
    }
}
