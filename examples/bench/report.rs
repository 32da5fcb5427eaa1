//! Output: a table per scenario for people, a JSON line per row for
//! machines, and the targets checked against the figures.

use std::fmt::Write as _;

/// Where output goes: with `--json`, stdout carries only JSON lines.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Progress and commentary: stderr.
    pub fn info(&self, line: &str) {
        eprintln!("{line}");
    }

    pub fn table(&self, table: &Table) {
        let text = table.render();
        if self.json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        for row in &table.rows {
            println!("{}", row.json(table.scenario, table.key));
        }
    }
}

/// One value of a row.
#[derive(Clone, Debug)]
pub enum Cell {
    Int(u64),
    /// A number shown with this many decimals.
    Num(f64, usize),
    Text(String),
    /// Not measured (say, the proxy's CPU on a direct WebSocket).
    None,
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Int(n) => n.to_string(),
            Cell::Num(x, d) if x.is_finite() => format!("{x:.d$}"),
            Cell::Text(s) => s.clone(),
            Cell::Num(..) | Cell::None => "-".into(),
        }
    }

    fn json(&self) -> String {
        match self {
            Cell::Int(n) => n.to_string(),
            Cell::Num(x, d) if x.is_finite() => format!("{x:.d$}"),
            Cell::Text(s) => serde_json::Value::from(s.as_str()).to_string(),
            Cell::Num(..) | Cell::None => "null".into(),
        }
    }

    pub fn value(&self) -> Option<f64> {
        match self {
            Cell::Int(n) => Some(*n as f64),
            Cell::Num(x, _) if x.is_finite() => Some(*x),
            _ => None,
        }
    }
}

/// A row: its key (a transport or a target) and named values, in order.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub cells: Vec<(&'static str, Cell)>,
}

impl Row {
    pub fn new(key: impl Into<String>) -> Row {
        Row {
            key: key.into(),
            cells: Vec::new(),
        }
    }

    pub fn set(&mut self, name: &'static str, cell: Cell) -> &mut Row {
        match self.cells.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c = cell,
            None => self.cells.push((name, cell)),
        }
        self
    }

    pub fn int(&mut self, name: &'static str, v: u64) -> &mut Row {
        self.set(name, Cell::Int(v))
    }

    pub fn num(&mut self, name: &'static str, v: Option<f64>, decimals: usize) -> &mut Row {
        self.set(name, v.map_or(Cell::None, |v| Cell::Num(v, decimals)))
    }

    pub fn text(&mut self, name: &'static str, v: impl Into<String>) -> &mut Row {
        self.set(name, Cell::Text(v.into()))
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.cells
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.value())
    }

    /// A text cell's value (say, `spread`).
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.cells.iter().find_map(|(n, c)| match c {
            Cell::Text(t) if *n == name => Some(t.clone()),
            _ => None,
        })
    }

    fn json(&self, scenario: &str, key: &str) -> String {
        let mut out = format!(
            "{{\"scenario\":{},\"{key}\":{}",
            serde_json::Value::from(scenario),
            serde_json::Value::from(self.key.as_str())
        );
        for (name, cell) in &self.cells {
            let _ = write!(out, ",\"{name}\":{}", cell.json());
        }
        out.push('}');
        out
    }
}

pub struct Table {
    pub scenario: &'static str,
    pub title: String,
    /// The name of the key column: "transport", or "target".
    pub key: &'static str,
    pub rows: Vec<Row>,
    /// Correctness failures: the run fails.
    pub failures: Vec<String>,
    /// Findings worth a look that are not failures.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(scenario: &'static str, title: impl Into<String>) -> Table {
        Table {
            scenario,
            title: title.into(),
            key: "transport",
            rows: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    pub fn render(&self) -> String {
        let mut columns: Vec<&'static str> = Vec::new();
        for row in &self.rows {
            for (name, _) in &row.cells {
                if !columns.contains(name) {
                    columns.push(name);
                }
            }
        }
        let grid: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                std::iter::once(row.key.clone())
                    .chain(columns.iter().map(|c| {
                        row.cells
                            .iter()
                            .find(|(n, _)| n == c)
                            .map_or("-".into(), |(_, cell)| cell.show())
                    }))
                    .collect()
            })
            .collect();
        let header: Vec<String> = std::iter::once(self.key.to_owned())
            .chain(columns.iter().map(|c| (*c).to_owned()))
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                grid.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("\n## {}: {}\n\n", self.scenario, self.title);
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i == 0 {
                    let _ = write!(l, "{c}{}", " ".repeat(pad));
                } else {
                    let _ = write!(l, "  {}{c}", " ".repeat(pad));
                }
            }
            l.trim_end().to_owned() + "\n"
        };
        out.push_str(&line(&header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for row in &grid {
            out.push_str(&line(row));
        }
        for f in &self.failures {
            let _ = writeln!(out, "FAILURE: {f}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// A target: a figure from one table, compared with a limit.
struct Target {
    name: &'static str,
    scenario: &'static str,
    transport: &'static str,
    column: &'static str,
    /// True when the figure must be at least the limit, false at most.
    at_least: bool,
    limit: f64,
    unit: &'static str,
}

const TARGETS: [Target; 25] = [
    Target {
        name: "channel: sse, one reader for 100 sessions >= 0.8x a reader each",
        scenario: "channel",
        transport: "sse-channel",
        column: "ratio_vs_own",
        at_least: true,
        limit: 0.8,
        unit: "x",
    },
    Target {
        name: "channel: stream, one reader for 100 sessions >= 0.8x a reader each",
        scenario: "channel",
        transport: "stream-channel",
        column: "ratio_vs_own",
        at_least: true,
        limit: 0.8,
        unit: "x",
    },
    Target {
        name: "channel: RSS per session, 100 on a channel <= 0.5x a reader each",
        scenario: "channel-memory",
        transport: "sse-channel-100",
        column: "ratio_vs_own",
        at_least: false,
        limit: 0.5,
        unit: "x",
    },
    Target {
        name: "channel: RSS per session, many on channels <= 0.5x a reader each",
        scenario: "channel-memory",
        transport: "sse-channel",
        column: "ratio_vs_own",
        at_least: false,
        limit: 0.5,
        unit: "x",
    },
    Target {
        name: "cluster: forwarded sse throughput >= 0.7x owner",
        scenario: "cluster",
        transport: "sse-forwarded",
        column: "throughput_vs_owner",
        at_least: true,
        limit: 0.7,
        unit: "x",
    },
    Target {
        name: "cluster: forwarded echo p50 <= owner + 150 us",
        scenario: "cluster",
        transport: "sse-forwarded",
        column: "p50_added_us",
        at_least: false,
        limit: 150.0,
        unit: "us",
    },
    Target {
        name: "time to open, first load behind buffering nginx <= 3 s",
        scenario: "time-to-open",
        transport: "first load",
        column: "open_s",
        at_least: false,
        limit: 3.0,
        unit: "s",
    },
    Target {
        name: "time to open, next load behind buffering nginx <= 1 s",
        scenario: "time-to-open",
        transport: "next load",
        column: "open_s",
        at_least: false,
        limit: 1.0,
        unit: "s",
    },
    Target {
        name: "sse throughput >= 0.7x direct",
        scenario: "throughput",
        transport: "sse",
        column: "ratio_vs_direct",
        at_least: true,
        limit: 0.7,
        unit: "x",
    },
    Target {
        name: "stream throughput >= 0.7x direct",
        scenario: "throughput",
        transport: "stream",
        column: "ratio_vs_direct",
        at_least: true,
        limit: 0.7,
        unit: "x",
    },
    Target {
        name: "sse proxy CPU <= 0.3 us per frame (throughput)",
        scenario: "throughput",
        transport: "sse",
        column: "proxy_cpu_us_per_msg",
        at_least: false,
        limit: 0.3,
        unit: "us",
    },
    Target {
        name: "stream proxy CPU <= 0.3 us per frame (throughput)",
        scenario: "throughput",
        transport: "stream",
        column: "proxy_cpu_us_per_msg",
        at_least: false,
        limit: 0.3,
        unit: "us",
    },
    Target {
        name: "poll throughput >= 0.5x direct",
        scenario: "throughput",
        transport: "poll",
        column: "ratio_vs_direct",
        at_least: true,
        limit: 0.5,
        unit: "x",
    },
    Target {
        name: "ws pass-through throughput >= nginx's (same run)",
        scenario: "throughput",
        transport: "ws-proxy",
        column: "ratio_vs_nginx",
        at_least: true,
        limit: 1.0,
        unit: "x",
    },
    Target {
        name: "echo p50 over sse <= 1.4x ws pass-through",
        scenario: "echo",
        transport: "sse",
        column: "ratio_vs_ws_proxy",
        at_least: false,
        limit: 1.4,
        unit: "x",
    },
    Target {
        name: "echo p99 over sse <= 2x ws pass-through",
        scenario: "echo",
        transport: "sse",
        column: "p99_ratio_vs_ws_proxy",
        at_least: false,
        limit: 2.0,
        unit: "x",
    },
    Target {
        name: "light p99 sse <= direct + 1 ms (us above)",
        scenario: "light",
        transport: "sse",
        column: "p99_above_direct_us",
        at_least: false,
        limit: 1000.0,
        unit: "us",
    },
    Target {
        name: "light p99 stream <= direct + 1 ms (us above)",
        scenario: "light",
        transport: "stream",
        column: "p99_above_direct_us",
        at_least: false,
        limit: 1000.0,
        unit: "us",
    },
    Target {
        name: "light p99 poll <= direct + 1 ms (us above)",
        scenario: "light",
        transport: "poll",
        column: "p99_above_direct_us",
        at_least: false,
        limit: 1000.0,
        unit: "us",
    },
    Target {
        name: "light p99 ws-proxy <= direct + 1 ms (us above)",
        scenario: "light",
        transport: "ws-proxy",
        column: "p99_above_direct_us",
        at_least: false,
        limit: 1000.0,
        unit: "us",
    },
    Target {
        name: "proxy RSS per held idle sse session <= 12 KiB (many)",
        scenario: "many",
        transport: "sse",
        column: "rss_kib_per_session",
        at_least: false,
        limit: 12.0,
        unit: "KiB",
    },
    Target {
        name: "proxy RSS per sse session, reader's conn reused <= 16 KiB",
        scenario: "reuse",
        transport: "sse-reused-conn",
        column: "rss_kib_per_session",
        at_least: false,
        limit: 16.0,
        unit: "KiB",
    },
    Target {
        name: "proxy CPU, held sse sessions, 1 frame per 5 s each <= 10%",
        scenario: "many",
        transport: "sse",
        column: "trickle_cpu_pct",
        at_least: false,
        limit: 10.0,
        unit: "%",
    },
    Target {
        name: "proxy RSS per held stream session <= 16 KiB",
        scenario: "many",
        transport: "stream",
        column: "rss_kib_per_session",
        at_least: false,
        limit: 16.0,
        unit: "KiB",
    },
    Target {
        name: "proxy RSS per held poll session <= 16 KiB",
        scenario: "many",
        transport: "poll",
        column: "rss_kib_per_session",
        at_least: false,
        limit: 16.0,
        unit: "KiB",
    },
];

/// The targets table: for each scenario that ran, each target's figure, met
/// or missed, and the margin in the target's unit (positive: to spare).
pub fn targets(tables: &[Table]) -> Table {
    let mut out = Table::new("targets", "targets on this machine, this run");
    out.key = "target";
    for t in &TARGETS {
        let Some(table) = tables.iter().find(|tb| tb.scenario == t.scenario) else {
            continue;
        };
        let Some(measured) = table.row(t.transport) else {
            continue; // a transport left out with --transports
        };
        let figure = measured.get(t.column);
        let mut row = Row::new(t.name);
        row.num("measured", figure, 2)
            .num("limit", Some(t.limit), 2);
        // With --repeat: the figure is the median run's; how far the runs
        // spread (in the figure the median was taken of).
        let spread = measured.text_of("spread");
        match figure {
            None => {
                row.text("status", "no figure");
            }
            Some(x) => {
                let met = if t.at_least {
                    x >= t.limit
                } else {
                    x <= t.limit
                };
                let margin = if t.at_least { x - t.limit } else { t.limit - x };
                row.text("status", if met { "met" } else { "MISSED" })
                    .text("margin", format!("{margin:+.2} {}", t.unit));
            }
        }
        if let Some(spread) = spread {
            row.text("spread", spread);
        }
        out.rows.push(row);
    }
    out
}
