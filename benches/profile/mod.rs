//! A whole-machine CPU profile of one bench phase with `perf`: which process the cores went to
//! (this one, PostgreSQL, Redis, the broker, idle) and, inside this process, the top functions.
//! Off-CPU time (fsync, network waits) does not show here: it is what the idle share is made of.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const OURS: &str = "gamemetrics (this bench: consumers + producer)";

/// A `perf record -a` running until [`Profile::finish`].
pub struct Profile {
    child: Child,
    file: PathBuf,
}

/// (library, function, share of its process's samples in %).
pub type Function = (String, String, f64);

/// What one profile found, ready to print.
pub struct Report {
    /// (process, share of all CPU samples on the machine, in %), largest first.
    pub processes: Vec<(String, f64)>,
    /// Per process (ours, Redis, PostgreSQL): (library, function, share of that process's
    /// samples in %), largest first.
    pub top: Vec<(String, Vec<Function>)>,
}

impl Profile {
    /// Starts sampling every CPU at 999 Hz; `None` when perf is missing or BENCH_PROFILE=0.
    pub fn start(tag: &str) -> Option<Profile> {
        if std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "0") {
            return None;
        }
        let file = std::env::temp_dir().join(format!("gamemetrics-bench-{tag}.perf"));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-a", "-o"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment to open its buffers on every CPU before the phase starts.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Some(Profile { child, file })
    }

    /// Stops sampling and reads the profile back.
    pub fn finish(mut self) -> Option<Report> {
        // Names of the processes alive now: the stores' backends outlive the phase's end.
        let names = process_names();
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.child.wait().ok()?;
        // One pass over the samples: `perf report --pid` came back empty now and then.
        let script = Command::new("perf")
            .args(["script", "-F", "comm,pid,ip,sym,dso", "-i"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mut per_process: HashMap<String, u64> = HashMap::new();
        let mut functions: HashMap<(String, String, String), u64> = HashMap::new();
        let mut total = 0u64;
        for line in String::from_utf8_lossy(&script.stdout).lines() {
            let Some(sample) = parse_sample(line) else {
                continue;
            };
            total += 1;
            let name = if sample.pid == 0 {
                "idle".to_owned()
            } else if sample.pid == std::process::id() {
                OURS.to_owned()
            } else {
                // A process that exited before the end (a Redis rewrite child, a psql) is
                // named by the thread the sample caught.
                group(names.get(&sample.pid).unwrap_or(&sample.comm))
            };
            *per_process.entry(name.clone()).or_default() += 1;
            if [OURS, "Redis", "PostgreSQL"].contains(&name.as_str()) {
                *functions.entry((name, sample.dso, sample.sym)).or_default() += 1;
            }
        }
        let mut processes: Vec<(String, f64)> = per_process
            .iter()
            .map(|(n, c)| (n.clone(), 100.0 * *c as f64 / total.max(1) as f64))
            .collect();
        processes.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut top = Vec::new();
        for (name, limit) in [(OURS, 12), ("Redis", 6), ("PostgreSQL", 6)] {
            let of_process = per_process.get(name).copied().unwrap_or(0).max(1) as f64;
            let mut list: Vec<Function> = functions
                .iter()
                .filter(|((p, _, _), _)| p == name)
                .map(|((_, dso, sym), c)| (dso.clone(), sym.clone(), 100.0 * *c as f64 / of_process))
                .filter(|(_, _, pct)| *pct >= 1.5)
                .collect();
            list.sort_by(|a, b| b.2.total_cmp(&a.2));
            list.truncate(limit);
            if !list.is_empty() {
                top.push((name.to_owned(), list));
            }
        }
        if std::env::var("BENCH_DEBUG").is_err() {
            let _ = std::fs::remove_file(&self.file);
        }
        Some(Report { processes, top })
    }
}

impl Report {
    /// The report as two markdown tables.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("{title}\n\n| process | share of the machine's CPU samples |\n|---|---:|\n");
        let mut rest = 0.0;
        for (name, pct) in &self.processes {
            if *pct < 0.5 {
                rest += pct;
            } else {
                out.push_str(&format!("| {name} | {pct:.1}% |\n"));
            }
        }
        out.push_str(&format!("| everything else (kernel threads, …) | {rest:.1}% |\n"));
        for (process, functions) in &self.top {
            out.push_str(&format!(
                "\nInside {process}, its top functions (≥ 1.5% of its samples):\n\n"
            ));
            out.push_str("| library | function | share of the process |\n|---|---|---:|\n");
            for (dso, sym, pct) in functions {
                out.push_str(&format!("| {dso} | `{}` | {pct:.1}% |\n", shorten(sym)));
            }
        }
        out
    }
}

/// One sample of `perf script -F comm,pid,ip,sym,dso`.
struct Sample {
    comm: String,
    pid: u32,
    sym: String,
    dso: String,
}

/// `  producer pollin 16785   7f44f1ad5b7c __vdso_clock_gettime ([vdso])`: the thread name may
/// hold spaces, the symbol too (Rust's `<A as B>::f`), the library is the last parenthesis.
fn parse_sample(line: &str) -> Option<Sample> {
    let (rest, dso) = line.trim().rsplit_once(" (")?;
    let dso = dso.strip_suffix(')')?;
    let dso = dso.rsplit('/').next().unwrap_or(dso).to_owned();
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    let at = (1..tokens.len().saturating_sub(1))
        .find(|&i| tokens[i].parse::<u32>().is_ok() && u64::from_str_radix(tokens[i + 1], 16).is_ok())?;
    let pid = tokens[at].parse().ok()?;
    Some(Sample {
        comm: tokens[..at].join(" "),
        pid,
        sym: tokens[at + 2..].join(" "),
        dso,
    })
}

/// Rust symbols carry their whole generic path; the table keeps the last segments readable.
fn shorten(sym: &str) -> String {
    let s = sym.replace('|', "\\|");
    if s.len() <= 90 {
        s
    } else {
        format!("…{}", &s[s.len() - 89..])
    }
}

/// pid → the process's name, from /proc.
fn process_names() -> HashMap<u32, String> {
    let mut names = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                names.insert(pid, format!("{} {}", comm.trim(), cmd));
            }
        }
    }
    names
}

/// Folds a process into the part of the system it belongs to.
fn group(name: &str) -> String {
    let comm = name.split_whitespace().next().unwrap_or("");
    if comm == "postgres" || name.contains("postgres") {
        "PostgreSQL".into()
    } else if comm.starts_with("redis-aof") || comm.starts_with("redis-rdb") {
        "Redis rewriting its append-only file (a fork)".into()
    } else if comm.starts_with("redis-server") {
        "Redis".into()
    } else if comm == "java" && name.contains("kafka") {
        "Kafka broker".into()
    } else if comm == "perf" {
        "perf itself".into()
    } else {
        format!("other ({comm})")
    }
}
