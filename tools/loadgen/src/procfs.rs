//! What the kernel says about a process: resident memory from `/proc/PID/status`, CPU time
//! from `/proc/PID/stat` (the same user + system time `getrusage` reports), and the open-files
//! limit; and the memory of the machine's TCP socket buffers, which no RSS shows.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the relay's memory is sampled while the load runs.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Resident set size now and at its highest (`VmRSS`, `VmHWM`), in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// A process to measure: a PID, or this process.
#[derive(Debug, Clone, Copy)]
pub enum Proc {
    Pid(u32),
    Myself,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
            Proc::Myself => format!("/proc/self/{file}"),
        }
    }

    pub fn memory(self) -> io::Result<Memory> {
        parse_status(&std::fs::read_to_string(self.path("status"))?)
            .ok_or_else(|| io::Error::other("no VmRSS/VmHWM in status"))
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(self) -> io::Result<f64> {
        let (user, system) = self.cpu_split()?;
        Ok(user + system)
    }

    /// User and system CPU seconds used so far, apart: code generation (the release profile's
    /// opt-level) shows in user time alone, the kernel's network stack in system time.
    pub fn cpu_split(self) -> io::Result<(f64, f64)> {
        let (utime, stime) = parse_stat_ticks(&std::fs::read_to_string(self.path("stat"))?)
            .ok_or_else(|| io::Error::other("malformed stat"))?;
        let hz = rustix::param::clock_ticks_per_second() as f64;
        Ok((utime as f64 / hz, stime as f64 / hz))
    }
}

fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// `utime` and `stime` in clock ticks. The command name in parentheses may hold spaces, so the
/// fields are counted from the last `)`: state is field 3, utime 14, stime 15.
fn parse_stat_ticks(text: &str) -> Option<(u64, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The memory of every TCP socket buffer on the machine, both ends of a loopback connection
/// included (`mem` of the `TCP:` line of `/proc/net/sockstat`, in pages), in KiB.
pub fn tcp_buffers_kib() -> Option<u64> {
    let pages = parse_sockstat_tcp_mem(&std::fs::read_to_string("/proc/net/sockstat").ok()?)?;
    Some(pages * rustix::param::page_size() as u64 / 1024)
}

fn parse_sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut fields = line.split_whitespace();
    while let Some(name) = fields.next() {
        let value = fields.next()?;
        if name == "mem" {
            return value.parse().ok();
        }
    }
    None
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit)?;
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// The highest RSS seen by a background sampler since the last [`Peak::reset`].
#[derive(Debug, Clone)]
pub struct Peak(Arc<AtomicU64>);

impl Peak {
    /// Samples `proc` every [`SAMPLE_EVERY`] until the runtime ends.
    pub fn start(proc: Proc) -> Peak {
        let peak = Peak(Arc::new(AtomicU64::new(0)));
        let shared = peak.0.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                match proc.memory() {
                    Ok(m) => {
                        shared.fetch_max(m.rss_kib, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        });
        peak
    }

    pub fn reset(&self, rss_kib: u64) {
        self.0.store(rss_kib, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_from_status() {
        let status = "Name:\tdirectus-relay\nVmPeak:\t  20000 kB\nVmHWM:\t    9120 kB\nVmRSS:\t    8004 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 8004,
                hwm_kib: 9120
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 125 31 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some((125, 31)));
        assert_eq!(parse_stat_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn reads_tcp_buffer_pages_from_sockstat() {
        let sockstat =
            "sockets: used 290\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 123\nUDP: inuse 1 mem 4\n";
        assert_eq!(parse_sockstat_tcp_mem(sockstat), Some(123));
        assert_eq!(parse_sockstat_tcp_mem("UDP: inuse 1 mem 4\n"), None);
    }

    #[test]
    fn measures_this_process() {
        let me = Proc::Myself.memory().expect("own status");
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(Proc::Myself.cpu_seconds().expect("own stat") >= 0.0);
    }
}
