//! CPU time and resident memory of process trees, read from `/proc`.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second in `/proc/<pid>/stat`: USER_HZ, which Linux fixes at 100 on
/// every architecture the harness runs on.
pub const TICKS_PER_SECOND: u64 = 100;

/// CPU and memory summed over some processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// User plus system time, in ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// How many processes were summed.
    pub processes: usize,
}

/// `(ppid, utime + stime)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // With `state` as field 0 here: ppid is 1, utime 11 and stime 12.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `VmRSS` of `pid`, in KiB; None once it has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`); None once it has exited.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `roots` and all their live descendants, such as nginx workers and the per-connection
/// children of sshd.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    out
}

/// CPU and memory of `roots` and their descendants.
pub fn usage(roots: &[u32]) -> Usage {
    let mut total = Usage::default();
    for pid in tree(roots) {
        if let (Some((_, ticks)), Some(rss)) = (stat(pid), rss_kib(pid)) {
            total.cpu_ticks += ticks;
            total.rss_kib += rss;
            total.processes += 1;
        }
    }
    total
}

/// Parses a comma-separated pid list; an empty string is no pids.
pub fn parse_pids(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = usage(&[std::process::id()]);
        assert_eq!(me.processes, 1);
        assert!(me.rss_kib > 0);
        assert!(fd_count(std::process::id()).is_some_and(|n| n >= 3));
    }
}
