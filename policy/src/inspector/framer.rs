//! Command and reply line framing across reads: a line split across reads is copied
//! (at most `cap + 1` bytes) until complete; a longer one is judged on its first `cap`
//! bytes, then streams through. The side (client commands, server replies) judges each
//! line's content through [`LineSide`]; the framer decides which bytes go out. It knows
//! no SMTP beyond "lines end at LF".

use bytes::Bytes;

use super::forward::Fwd;
use super::Output;
use crate::event::Direction;
use crate::scanner::CONTENT_FINDERS;

/// What a side decided about a line from its content (or its head, when overlong).
pub(super) enum LineDecision {
    Pass,
    /// Every content byte becomes this byte (`X` for a masked command).
    Fill(u8),
    /// These bytes replace the judged content (same length); `Some(fill)` masks the
    /// rest of an overlong line too.
    Rewrite(Bytes, Option<u8>),
    /// These bytes go out instead of the whole line, line end included (a reply
    /// swallowed or lines added). For an overlong line: as `Pass`.
    Replace(Bytes),
    /// Nothing of the line goes out, line end included; the session goes on (a line
    /// longer than the cap is masked with `X` instead).
    Swallow,
    Stop,
}

/// A side of the session as the framer sees it.
pub(super) trait LineSide {
    /// Judges a line from its content, CRLF excluded: the whole of it (`complete`), or
    /// for a line longer than the cap its first `cap` bytes, `len` then being `cap + 1`
    /// (all that is known wherever the reads split it).
    fn head(&mut self, content: &[u8], len: u64, complete: bool, out: &mut Output) -> LineDecision;
    /// An overlong line ended with `len` content bytes; `false` stops the session before
    /// its line end goes out.
    fn overlong_end(&mut self, len: u64, out: &mut Output) -> bool;
    /// The session was stopped (possibly while judging a line for another reason,
    /// e.g. held client bytes it released): nothing of the line goes out then.
    fn stopped(&self) -> bool;
}

/// The tail of an overlong line, streaming through.
#[derive(Clone, Copy, Debug)]
struct Stream {
    fill: Option<u8>,
    /// Content bytes so far.
    len: u64,
    /// The previous read ended with a CR: content, or the start of the line end.
    held_cr: bool,
}

/// Incremental line framing for commands and replies. A line split across reads is
/// copied (at most `cap + 1` bytes) until complete; a longer one is judged on its first
/// `cap` bytes, then streams through. The cut points (what is forwarded before a stop)
/// do not depend on where reads split the input: content before a line end, never the
/// line end itself, and a CR at the end of a read waits for the next byte.
#[derive(Default)]
pub(super) struct LineFramer {
    /// Bytes of a line begun in an earlier read; then, while judging, its head.
    buf: Vec<u8>,
    stream: Option<Stream>,
}

impl LineFramer {
    /// Part of a line was read (buffered, or an overlong line streaming through).
    pub(super) fn mid_line(&self) -> bool {
        self.stream.is_some() || !self.buf.is_empty()
    }

    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Frames from `pos`: returns after one line, at the end of the input, or where a
    /// stop left it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &mut self,
        cap: usize,
        input: &Bytes,
        pos: usize,
        fwd: &mut Fwd,
        direction: Direction,
        out: &mut Output,
        side: &mut impl LineSide,
    ) -> usize {
        let rest = &input[pos..];
        let lf = CONTENT_FINDERS.lf.find(rest);
        if let Some(s) = self.stream.take() {
            return self.stream_step(s, input, pos, lf, fwd, direction, out, side);
        }
        let held = self.buf.len();
        match lf {
            Some(i) => {
                let n = i + 1;
                let ends_crlf = if i > 0 {
                    rest[i - 1] == b'\r'
                } else {
                    held > 0 && self.buf[held - 1] == b'\r'
                };
                let len = held + i - ends_crlf as usize;
                let held_content = held.min(len);
                let rest_content = len - held_content;
                let overlong = len > cap;
                let head_len = len.min(cap);
                if held > 0 && held_content == held {
                    let want = head_len.saturating_sub(held);
                    self.buf.extend_from_slice(&rest[..want]);
                }
                let head: &[u8] = if held == 0 {
                    &rest[..head_len]
                } else {
                    &self.buf[..head_len]
                };
                let judged_len = if overlong { cap as u64 + 1 } else { len as u64 };
                let mut decision = side.head(head, judged_len, !overlong, out);
                if side.stopped() {
                    decision = LineDecision::Stop;
                }
                let held_bytes = &self.buf[..held_content];
                let sink = out.sink(direction);
                let (from, to) = (pos, pos + rest_content);
                match decision {
                    LineDecision::Stop => {
                        self.buf.clear();
                        return pos;
                    }
                    LineDecision::Replace(bytes) if !overlong => {
                        fwd.emit(input, bytes, sink);
                        self.buf.clear();
                        return pos + n;
                    }
                    LineDecision::Pass | LineDecision::Replace(_) => {
                        fwd.content(input, sink, held_bytes, from, to, 0, None)
                    }
                    LineDecision::Swallow if !overlong => {
                        self.buf.clear();
                        return pos + n;
                    }
                    LineDecision::Swallow => {
                        fwd.content(input, sink, held_bytes, from, to, 0, Some(b'X'))
                    }
                    LineDecision::Fill(f) => {
                        fwd.content(input, sink, held_bytes, from, to, 0, Some(f))
                    }
                    LineDecision::Rewrite(bytes, fill) => {
                        let covered = bytes.len();
                        fwd.emit(input, bytes, sink);
                        fwd.content(input, sink, held_bytes, from, to, covered, fill);
                    }
                }
                self.buf.clear();
                if overlong && !side.overlong_end(len as u64, out) {
                    return to;
                }
                let sink = out.sink(direction);
                if ends_crlf && i == 0 {
                    fwd.emit(input, Bytes::from_static(b"\r"), sink);
                }
                fwd.pass(input, to, pos + n, sink);
                pos + n
            }
            None if held + rest.len() < cap + 2 => {
                // cap content bytes and a CR still fit: wait for the rest of the line.
                self.buf.extend_from_slice(rest);
                input.len()
            }
            None => {
                // More than `cap` content bytes: judge the head, stream the rest.
                let trailing_cr = rest.last() == Some(&b'\r');
                let rest_content = rest.len() - trailing_cr as usize;
                let len = held + rest_content;
                if held < cap {
                    self.buf.extend_from_slice(&rest[..cap - held]);
                }
                let mut decision = side.head(&self.buf[..cap], cap as u64 + 1, false, out);
                if side.stopped() {
                    decision = LineDecision::Stop;
                }
                let held_bytes = &self.buf[..held];
                let sink = out.sink(direction);
                let (from, to) = (pos, pos + rest_content);
                let fill = match decision {
                    LineDecision::Stop => {
                        self.buf.clear();
                        return pos;
                    }
                    LineDecision::Swallow => {
                        fwd.content(input, sink, held_bytes, from, to, 0, Some(b'X'));
                        Some(b'X')
                    }
                    LineDecision::Pass | LineDecision::Replace(_) => {
                        fwd.content(input, sink, held_bytes, from, to, 0, None);
                        None
                    }
                    LineDecision::Fill(f) => {
                        fwd.content(input, sink, held_bytes, from, to, 0, Some(f));
                        Some(f)
                    }
                    LineDecision::Rewrite(bytes, fill) => {
                        let covered = bytes.len();
                        fwd.emit(input, bytes, sink);
                        fwd.content(input, sink, held_bytes, from, to, covered, fill);
                        fill
                    }
                };
                self.buf.clear();
                self.stream = Some(Stream {
                    fill,
                    len: len as u64,
                    held_cr: trailing_cr,
                });
                input.len()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_step(
        &mut self,
        mut s: Stream,
        input: &Bytes,
        pos: usize,
        lf: Option<usize>,
        fwd: &mut Fwd,
        direction: Direction,
        out: &mut Output,
        side: &mut impl LineSide,
    ) -> usize {
        let rest = &input[pos..];
        let Some(i) = lf else {
            let sink = out.sink(direction);
            if s.held_cr {
                fwd.cr(input, s.fill, sink);
                s.len += 1;
            }
            let trailing_cr = rest.last() == Some(&b'\r');
            let content = rest.len() - trailing_cr as usize;
            fwd.content(input, sink, &[], pos, pos + content, 0, s.fill);
            s.len += content as u64;
            s.held_cr = trailing_cr;
            self.stream = Some(s);
            return input.len();
        };
        let ends_crlf = if i > 0 {
            rest[i - 1] == b'\r'
        } else {
            s.held_cr
        };
        let sink = out.sink(direction);
        if s.held_cr && i > 0 {
            fwd.cr(input, s.fill, sink);
            s.len += 1;
        }
        let content = i - (ends_crlf && i > 0) as usize;
        fwd.content(input, sink, &[], pos, pos + content, 0, s.fill);
        s.len += content as u64;
        if !side.overlong_end(s.len, out) {
            return pos + content;
        }
        let sink = out.sink(direction);
        if ends_crlf && i == 0 {
            fwd.emit(input, Bytes::from_static(b"\r"), sink);
        }
        fwd.pass(input, pos + content, pos + i + 1, sink);
        pos + i + 1
    }
}
