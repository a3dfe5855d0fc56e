//! CPU time from /proc: of given processes (utime + stime), and of the whole machine (busy
//! and total jiffies of the first line of /proc/stat), so a run can say whether it was bound
//! by the machine's cores.

/// utime + stime of `pids`, in seconds (processes that have gone count nothing).
pub(super) fn process_cpu_seconds(pids: &[u32]) -> f64 {
    let ticks_per_second = clock_ticks_per_second();
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| cpu_ticks(&stat))
        .sum::<u64>() as f64
        / ticks_per_second
}

/// Fields 14 and 15 of /proc/<pid>/stat (after the parenthesised command name).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK` (100 on Linux nearly always, which is also the fallback).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// The machine's CPU counters at one moment, all cores together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// Now; `None` without /proc/stat.
    pub fn now() -> Option<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// The `cpu` line: user nice system idle iowait irq softirq steal …; idle and iowait are
    /// not busy, guest time is already counted in user.
    fn parse(line: &str) -> Option<MachineCpu> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let counters: Vec<u64> = fields
            .take(8)
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = counters.iter().sum();
        let idle = counters.get(3)? + counters.get(4).copied().unwrap_or(0);
        Some(MachineCpu {
            busy: total - idle,
            total,
        })
    }

    /// The share of all cores' time that was busy between `earlier` and `self` (0..=1).
    pub fn busy_since(self, earlier: MachineCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let stat = "1234 (postgres: x (y)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn the_machine_is_busy_for_all_but_idle_and_iowait() {
        let before = MachineCpu::parse("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let after = MachineCpu::parse("cpu  250 0 100 850 100 0 0 0 0 0").unwrap();
        // 300 jiffies passed, 200 of them busy (user +150, system +50).
        let busy = after.busy_since(before).unwrap();
        assert!((busy - 200.0 / 300.0).abs() < 1e-9, "{busy}");
        assert_eq!(MachineCpu::parse("cpu0 1 2 3 4"), None);
        assert_eq!(before.busy_since(before), None);
    }
}
