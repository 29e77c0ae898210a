//! Line framing with memchr over whole read buffers, incremental across reads.
//!
//! Two framers, both push parsers that borrow the buffer and return offsets
//! (`Partial` is a normal result, as in httparse):
//! - [`line_end`]: command and reply lines end at LF (CRLF, or a bare LF as lenient
//!   servers accept it, so the inspector never frames a line differently from them).
//! - [`ContentScanner`]: DATA content, where only CRLF ends a line (RFC 5321 §2.3.8)
//!   and a bare CR or bare LF is reported at its offset, so the caller can stop
//!   forwarding before it (SMTP smuggling defence). A CR at the very end of a read is
//!   held back until the next read says whether an LF follows. It also knows when a
//!   line break ends a lone dot that some server would take for the end of data
//!   ([`ContentScanner::smuggled_dot`]), and reports NUL octets when asked to.
//!
//! Neither buffers a line: they count its length, so an overlong line costs nothing.
//! They know nothing of SMTP verbs, dots or MIME.

use std::sync::LazyLock;

use memchr::memchr;

/// Searches for any of a fixed set of bytes with a searcher built once for this CPU.
/// memchr's free functions pick the CPU's routine and broadcast the needles into
/// vector registers on every call; per content line (about 78 bytes) that set-up is a
/// third of the cost of finding the line's end, so the content hot loops call these.
#[derive(Clone, Copy, Debug)]
pub struct Finder<const N: usize> {
    needles: [u8; N],
    #[cfg(target_arch = "x86_64")]
    avx2: Option<Avx2<N>>,
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
enum Avx2<const N: usize> {
    One(memchr::arch::x86_64::avx2::memchr::One),
    Two(memchr::arch::x86_64::avx2::memchr::Two),
    Three(memchr::arch::x86_64::avx2::memchr::Three),
}

impl<const N: usize> Finder<N> {
    fn new(needles: [u8; N]) -> Finder<N> {
        #[cfg(target_arch = "x86_64")]
        let avx2 = {
            use memchr::arch::x86_64::avx2::memchr as avx2;
            match needles[..] {
                [a] => avx2::One::new(a).map(Avx2::One),
                [a, b] => avx2::Two::new(a, b).map(Avx2::Two),
                [a, b, c] => avx2::Three::new(a, b, c).map(Avx2::Three),
                _ => None,
            }
        };
        Finder {
            needles,
            #[cfg(target_arch = "x86_64")]
            avx2,
        }
    }

    /// Offset of the first needle in `haystack`. Inlined into the hot loops: a call
    /// per line costs more than the few instructions it saves in code size.
    #[inline(always)]
    pub fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        match &self.avx2 {
            Some(Avx2::One(f)) => return f.find(haystack),
            Some(Avx2::Two(f)) => return f.find(haystack),
            Some(Avx2::Three(f)) => return f.find(haystack),
            None => {}
        }
        match self.needles[..] {
            [a] => memchr(a, haystack),
            [a, b] => memchr::memchr2(a, b, haystack),
            [a, b, c] => memchr::memchr3(a, b, c, haystack),
            _ => unreachable!("a finder has one to three needles"),
        }
    }
}

/// The finders of the per-line loops: message content's line ends, line ends or NUL,
/// NUL; command and reply lines' LF; in a command, the space after its verb, and in
/// an address a pipe, or a backquote or NUL.
pub struct ContentFinders {
    pub cr_lf: Finder<2>,
    pub cr_lf_nul: Finder<3>,
    pub nul: Finder<1>,
    pub lf: Finder<1>,
    pub space: Finder<1>,
    pub pipe: Finder<1>,
    pub backquote_nul: Finder<2>,
}

/// Built on first use: CPU feature detection needs the standard library at run time.
pub static CONTENT_FINDERS: LazyLock<ContentFinders> = LazyLock::new(|| ContentFinders {
    cr_lf: Finder::new([b'\r', b'\n']),
    cr_lf_nul: Finder::new([b'\r', b'\n', 0]),
    nul: Finder::new([0]),
    lf: Finder::new([b'\n']),
    space: Finder::new([b' ']),
    pipe: Finder::new([b'|']),
    backquote_nul: Finder::new([b'`', 0]),
});

/// Offset just past the next LF in `buf`, if any.
#[inline]
pub fn line_end(buf: &[u8]) -> Option<usize> {
    memchr(b'\n', buf).map(|i| i + 1)
}

/// Length of a framed line's content: the line without its CRLF or bare LF.
#[inline]
pub fn content_len(line: &[u8]) -> usize {
    match line {
        [rest @ .., b'\r', b'\n'] => rest.len(),
        [rest @ .., b'\n'] => rest.len(),
        _ => line.len(),
    }
}

/// One step of [`ContentScanner::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// A line ended with CRLF; `end` is just past the LF, `len` the line's content
    /// length across reads (CRLF excluded).
    Line { end: usize, len: u64 },
    /// A bare CR (not followed by LF) or bare LF (not preceded by CR). The bytes before
    /// `at` are clean; the bare byte is content and scanning resumes at `resume`.
    /// `held` means the bare byte is the CR held back at the end of the previous read
    /// (then `at == resume` and the caller still owes that CR downstream).
    Bare {
        at: usize,
        resume: usize,
        cr: bool,
        held: bool,
    },
    /// No line end in the rest of the buffer; `len` is the line's length so far. When
    /// `holds_cr`, the buffer's last byte is a CR that must not be forwarded yet.
    Partial { len: u64, holds_cr: bool },
    /// A NUL octet at `at` (only while [`ContentScanner::watch_nul`] is on). The bytes
    /// before it are clean; it is content and scanning resumes at `resume`.
    Nul { at: usize, resume: usize },
}

/// What the content since the last line break (CRLF, bare CR or bare LF) is, NULs
/// aside: nothing yet, exactly one dot, or anything else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SinceBreak {
    #[default]
    Empty,
    Dot,
    Other,
}

/// Strict CRLF framing for message content with bare CR / LF detection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentScanner {
    /// Content bytes of the current line seen so far.
    line_len: u64,
    /// The previous read ended with a CR we have not judged yet.
    held_cr: bool,
    /// Report NUL octets as [`Scan::Nul`].
    watch_nul: bool,
    since_break: SinceBreak,
    /// A NUL came since the last line break.
    nul_since_break: bool,
    /// The last line break was a bare CR or LF (false at the start: the line that
    /// started the content, `DATA` or the 354's pipelined predecessor, ended in CRLF).
    after_bare: bool,
    /// The break just reported ends a smuggled dot line.
    smuggled_dot: bool,
}

impl ContentScanner {
    pub fn new() -> ContentScanner {
        ContentScanner::default()
    }

    /// True when the previous read's last byte (a CR) was held back.
    pub fn holds_cr(&self) -> bool {
        self.held_cr
    }

    /// Length of the current line so far.
    pub fn line_len(&self) -> u64 {
        self.line_len
    }

    /// Report NUL octets ([`Scan::Nul`]) from now on, or stop reporting them.
    pub fn watch_nul(&mut self, on: bool) {
        self.watch_nul = on;
    }

    pub fn watches_nul(&self) -> bool {
        self.watch_nul
    }

    /// True when the line break just reported ([`Scan::Line`] or [`Scan::Bare`]) ends a
    /// line that is a lone dot once NULs are removed, and that line is not the strict
    /// `CRLF . CRLF`: a bare CR or LF before or after the dot (`\n.\n`, `\r\n.\n`,
    /// `\n.\r\n`, `\r.\r`), or a NUL beside it (`\r\n\x00.\r\n`). A server that takes
    /// bare line ends, or drops NULs, ends the message there; what follows would be
    /// commands to it: SMTP smuggling, whatever a policy says about bare line ends.
    pub fn smuggled_dot(&self) -> bool {
        self.smuggled_dot
    }

    /// Notes the content bytes `seg` (no line break among them) of the current line.
    #[inline]
    fn note(&mut self, seg: &[u8]) {
        if self.since_break == SinceBreak::Other {
            return;
        }
        for &b in seg {
            match (b, self.since_break) {
                (0, _) => self.nul_since_break = true,
                (b'.', SinceBreak::Empty) => self.since_break = SinceBreak::Dot,
                _ => {
                    self.since_break = SinceBreak::Other;
                    return;
                }
            }
        }
    }

    /// A line break (bare or CRLF) was found: judge the line it ends.
    #[inline]
    fn line_break(&mut self, bare: bool) {
        self.smuggled_dot = self.since_break == SinceBreak::Dot
            && (bare || self.after_bare || self.nul_since_break);
        self.since_break = SinceBreak::Empty;
        self.nul_since_break = false;
        self.after_bare = bare;
    }

    /// Scans `buf` from `pos` to the next event.
    #[inline]
    pub fn next(&mut self, buf: &[u8], pos: usize) -> Scan {
        self.smuggled_dot = false;
        if self.held_cr {
            match buf.get(pos) {
                None => {
                    return Scan::Partial {
                        len: self.line_len,
                        holds_cr: false,
                    }
                }
                Some(b'\n') => {
                    self.held_cr = false;
                    let len = self.line_len;
                    self.line_len = 0;
                    self.line_break(false);
                    return Scan::Line { end: pos + 1, len };
                }
                Some(_) => {
                    self.held_cr = false;
                    self.line_len += 1;
                    self.line_break(true);
                    return Scan::Bare {
                        at: pos,
                        resume: pos,
                        cr: true,
                        held: true,
                    };
                }
            }
        }
        let rest = &buf[pos..];
        let finders = &*CONTENT_FINDERS;
        let found = if self.watch_nul {
            finders.cr_lf_nul.find(rest)
        } else {
            finders.cr_lf.find(rest)
        };
        match found {
            None => {
                self.note(rest);
                self.line_len += rest.len() as u64;
                Scan::Partial {
                    len: self.line_len,
                    holds_cr: false,
                }
            }
            Some(i) if rest[i] == 0 => {
                self.note(&rest[..=i]);
                self.line_len += i as u64 + 1;
                Scan::Nul {
                    at: pos + i,
                    resume: pos + i + 1,
                }
            }
            Some(i) if rest[i] == b'\r' => {
                self.note(&rest[..i]);
                match rest.get(i + 1) {
                    Some(b'\n') => {
                        let len = self.line_len + i as u64;
                        self.line_len = 0;
                        self.line_break(false);
                        Scan::Line {
                            end: pos + i + 2,
                            len,
                        }
                    }
                    Some(_) => {
                        self.line_len += i as u64 + 1;
                        self.line_break(true);
                        Scan::Bare {
                            at: pos + i,
                            resume: pos + i + 1,
                            cr: true,
                            held: false,
                        }
                    }
                    None => {
                        self.line_len += i as u64;
                        self.held_cr = true;
                        Scan::Partial {
                            len: self.line_len,
                            holds_cr: true,
                        }
                    }
                }
            }
            Some(i) => {
                // An LF with no CR before it: a CR at rest[i-1] would have been found first.
                self.note(&rest[..i]);
                self.line_len += i as u64 + 1;
                self.line_break(true);
                Scan::Bare {
                    at: pos + i,
                    resume: pos + i + 1,
                    cr: false,
                    held: false,
                }
            }
        }
    }

    /// Forget the current line (a new message starts); whether NULs are watched stays.
    pub fn reset(&mut self) {
        *self = ContentScanner {
            watch_nul: self.watch_nul,
            ..ContentScanner::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the scanner over `reads` and renders every event.
    fn scan_all(reads: &[&[u8]]) -> Vec<String> {
        let mut s = ContentScanner::new();
        let mut events = Vec::new();
        for buf in reads {
            let mut pos = 0;
            loop {
                match s.next(buf, pos) {
                    Scan::Line { end, len } => {
                        events.push(format!("line {len}"));
                        pos = end;
                    }
                    Scan::Bare {
                        resume, cr, held, ..
                    } => {
                        events.push(format!("bare {} {held}", if cr { "cr" } else { "lf" }));
                        pos = resume;
                    }
                    Scan::Nul { resume, .. } => {
                        events.push("nul".to_string());
                        pos = resume;
                    }
                    Scan::Partial { .. } => break,
                }
                if s.smuggled_dot() {
                    events.push("smuggled dot".to_string());
                }
            }
        }
        events
    }

    #[test]
    fn crlf_lines_across_reads() {
        assert_eq!(
            scan_all(&[b"ab\r\ncd", b"e\r", b"\nf", b"\r\n"]),
            ["line 2", "line 3", "line 1"]
        );
    }

    #[test]
    fn bare_lf_and_bare_cr_are_reported_not_framed() {
        assert_eq!(
            scan_all(&[b"a\nb\rc\r\n"]),
            ["bare lf false", "bare cr false", "line 5"]
        );
    }

    #[test]
    fn held_cr_judged_by_next_read() {
        // `\r.\r\n`: a server that ends lines at a bare CR sees a lone dot.
        assert_eq!(
            scan_all(&[b"x\r", b".\r\n"]),
            ["bare cr true", "line 3", "smuggled dot"]
        );
        let mut s = ContentScanner::new();
        assert_eq!(
            s.next(b"x\r", 0),
            Scan::Partial {
                len: 1,
                holds_cr: true
            }
        );
        assert!(s.holds_cr());
    }

    #[test]
    fn a_dot_line_beside_a_bare_line_end_is_a_smuggled_end_of_data() {
        for text in [
            &b"a\n.\nMAIL"[..],
            b"a\r\n.\nMAIL",
            b"a\n.\r\nMAIL",
            b"a\r.\rMAIL",
            b"a\r\n.\rMAIL",
            b".\nMAIL",
        ] {
            let events = scan_all(&[text]);
            assert!(
                events.contains(&"smuggled dot".to_string()),
                "{}: {events:?}",
                text.escape_ascii()
            );
            // Split anywhere, the same verdict.
            for cut in 1..text.len() {
                let events = scan_all(&[&text[..cut], &text[cut..]]);
                assert!(events.contains(&"smuggled dot".to_string()), "{cut}");
            }
        }
    }

    #[test]
    fn a_nul_beside_a_dot_line_is_a_smuggled_end_of_data() {
        for text in [
            &b"a\r\n\x00.\r\nMAIL"[..],
            b"a\r\n.\x00\r\n",
            b"a\r\n\x00\x00.\x00\r\n",
        ] {
            let events = scan_all(&[text]);
            assert!(
                events.contains(&"smuggled dot".to_string()),
                "{}",
                text.escape_ascii()
            );
        }
    }

    #[test]
    fn the_real_end_of_data_and_ordinary_dots_are_not_smuggling() {
        for text in [
            &b"a\r\n.\r\n"[..],
            b"a\r\n..\n",
            b"a\n.x\n",
            b"a\n\x00..\r\n",
            b"a.\n",
            b"\r\r\n.\r\n",
        ] {
            let events = scan_all(&[text]);
            assert!(
                !events.contains(&"smuggled dot".to_string()),
                "{}: {events:?}",
                text.escape_ascii()
            );
        }
    }

    #[test]
    fn nul_is_reported_only_while_watched() {
        assert_eq!(scan_all(&[b"a\x00b\r\n"]), ["line 3"]);
        let mut s = ContentScanner::new();
        s.watch_nul(true);
        assert_eq!(s.next(b"a\x00b\r\n", 0), Scan::Nul { at: 1, resume: 2 });
        assert_eq!(s.next(b"a\x00b\r\n", 2), Scan::Line { end: 5, len: 3 });
        s.reset();
        assert!(s.watches_nul(), "a new message keeps the setting");
    }

    #[test]
    fn overlong_line_is_counted_not_buffered() {
        let chunk = [b'a'; 4096];
        let mut s = ContentScanner::new();
        for _ in 0..1000 {
            assert!(matches!(s.next(&chunk, 0), Scan::Partial { .. }));
        }
        assert_eq!(s.line_len(), 4096 * 1000);
        assert_eq!(
            s.next(b"\r\n", 0),
            Scan::Line {
                end: 2,
                len: 4096 * 1000
            }
        );
    }

    #[test]
    fn line_end_and_content_len() {
        assert_eq!(line_end(b"NOOP\r\nQUIT"), Some(6));
        assert_eq!(line_end(b"NOOP"), None);
        assert_eq!(content_len(b"NOOP\r\n"), 4);
        assert_eq!(content_len(b"NOOP\n"), 4);
        assert_eq!(content_len(b"NOOP"), 4);
    }
}
