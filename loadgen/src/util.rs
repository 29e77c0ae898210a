//! Small shared helpers: a deterministic PRNG, duration/size/address parsing,
//! hex encoding, free-port reservation, per-shard counters.
//!
//! Nothing here does I/O on the hot path.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// xorshift64* — deterministic, fast, good enough to pick sizes and inject faults.
/// Not cryptographic; a seed of 0 is remapped because xorshift would stay at 0.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // splitmix64 scramble so nearby seeds (shard 0, 1, 2...) diverge at once.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Parses a duration with the dataplane config's grammar ("500ms", "90s", "5min",
/// "1h30m", a bare "0"), so an operator writes times the same way everywhere.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    smtpgate_policy::config::parse_duration(text)
        .ok_or_else(|| format!("invalid duration {text:?} (examples: 250ms, 90s, 5min, 1h30m)"))
}

/// Parses "1024", "1k", "10K", "1m" (binary multiples: 1k = 1024 bytes).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, multiplier) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1024),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (examples: 1024, 10k, 1m)"))?;
    if value == 0 {
        return Err(format!("size must be positive: {text:?}"));
    }
    Ok(value * multiplier)
}

/// A message size distribution: `1k` or `1k:60,10k:30,100k:10` (size:weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeSpec {
    pub classes: Vec<(usize, u32)>,
}

impl std::str::FromStr for SizeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut classes = Vec::new();
        for part in text.split(',') {
            let (size, weight) = match part.split_once(':') {
                Some((size, weight)) => {
                    let weight: u32 = weight
                        .trim()
                        .parse()
                        .map_err(|_| format!("invalid weight in size mix {part:?}"))?;
                    (parse_bytes(size)?, weight)
                }
                None => (parse_bytes(part)?, 1),
            };
            if weight > 0 {
                classes.push((size, weight));
            }
        }
        if classes.is_empty() {
            return Err(format!("empty size spec {text:?}"));
        }
        Ok(SizeSpec { classes })
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let human = |size: usize| match size {
            s if s % (1024 * 1024) == 0 => format!("{}m", s / (1024 * 1024)),
            s if s % 1024 == 0 => format!("{}k", s / 1024),
            s => s.to_string(),
        };
        let parts: Vec<String> = match self.classes.as_slice() {
            [(size, _)] => vec![human(*size)],
            classes => classes
                .iter()
                .map(|&(size, weight)| format!("{}:{weight}", human(size)))
                .collect(),
        };
        f.write_str(&parts.join(","))
    }
}

pub fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: no address found"),
        )
    })
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Binds (without listening) a SO_REUSEPORT socket so that port 0 resolves to
/// one concrete port every shard can then bind. A bound but non-listening
/// socket receives no connections, so holding it while shards bind is harmless.
pub fn reserve_port(addr: SocketAddr) -> io::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not inet"))?;
    Ok((socket, bound))
}

/// A free loopback port for a child process to bind. Racy by nature (the port
/// is released before the child binds it), acceptable on a test machine.
pub fn free_loopback_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Number of executors to run by default: half the CPUs this process may
/// use (at least one). The loadgen usually shares the machine with what it
/// measures (always in `compare`); an executor per core would compete with
/// it for CPU and add cross-core wake-ups. `--cores` overrides.
pub fn default_cores() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cpus / 2).max(1)
}

/// CPUs this process may use, for reports.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A counter written by exactly one shard and read by the main thread.
/// Padded to a cache line so shards never false-share; single-writer, so a
/// relaxed load+store is enough (no locked read-modify-write on the hot path).
#[repr(align(64))]
#[derive(Default)]
pub struct ShardCounter(AtomicU64);

impl ShardCounter {
    pub fn add(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whole-process CPU time (user + system) consumed so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn size_mix_parses() {
        let spec: SizeSpec = "1k:60,10k:30,100k:10".parse().unwrap();
        assert_eq!(
            spec.classes,
            vec![(1024, 60), (10 * 1024, 30), (100 * 1024, 10)]
        );
        assert_eq!(spec.to_string(), "1k:60,10k:30,100k:10");
        let single: SizeSpec = "1024".parse().unwrap();
        assert_eq!(single.classes, vec![(1024, 1)]);
        assert_eq!(single.to_string(), "1k");
        assert_eq!("1000".parse::<SizeSpec>().unwrap().to_string(), "1000");
        assert!("0".parse::<SizeSpec>().is_err());
        assert!("1k:x".parse::<SizeSpec>().is_err());
    }

    #[test]
    fn xorshift_is_deterministic_and_spread() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut rng = XorShift::new(1);
        let hits = (0..10_000).filter(|_| rng.next_f64() < 0.25).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
