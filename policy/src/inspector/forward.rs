//! Forwarding: unchanged bytes of one read go out as slices of it, contiguous ranges
//! coalesced into one slice; rewritten bytes (mask fills, a line re-joined across
//! reads) are pushed in order between them. Knows nothing of SMTP.

use bytes::Bytes;

/// The pending unchanged range `[start, end)` of the current input.
#[derive(Default)]
pub(super) struct Fwd {
    start: usize,
    end: usize,
}

impl Fwd {
    /// Forwards `input[from..to]` unchanged.
    #[inline]
    pub(super) fn pass(&mut self, input: &Bytes, from: usize, to: usize, sink: &mut Vec<Bytes>) {
        if from == to {
            return;
        }
        if from != self.end {
            self.flush(input, sink);
            self.start = from;
        }
        self.end = to;
    }

    /// Pushes the pending range out (before other bytes, or at the end of a read).
    #[inline]
    pub(super) fn flush(&mut self, input: &Bytes, sink: &mut Vec<Bytes>) {
        if self.end > self.start {
            sink.push(input.slice(self.start..self.end));
        }
        self.start = self.end;
    }

    /// Forwards rewritten bytes after what is pending.
    pub(super) fn emit(&mut self, input: &Bytes, bytes: Bytes, sink: &mut Vec<Bytes>) {
        self.flush(input, sink);
        if !bytes.is_empty() {
            sink.push(bytes);
        }
    }

    /// Takes back the last pending byte (the LAST BDAT chunk's end, when a check at
    /// the end of the message stops the session).
    pub(super) fn retract_last(&mut self, sink: &mut Vec<Bytes>) {
        if self.end > self.start {
            self.end -= 1;
        } else if let Some(last) = sink.last_mut() {
            last.truncate(last.len() - 1);
            if last.is_empty() {
                sink.pop();
            }
        }
    }

    /// `n` copies of a mask byte (`X` or `*`), as static slices (no allocation).
    pub(super) fn fill(&mut self, input: &Bytes, fill: u8, mut n: usize, sink: &mut Vec<Bytes>) {
        static XS: [u8; 1024] = [b'X'; 1024];
        static STARS: [u8; 1024] = [b'*'; 1024];
        let src: &'static [u8; 1024] = if fill == b'*' { &STARS } else { &XS };
        self.flush(input, sink);
        while n > 0 {
            let k = n.min(src.len());
            sink.push(Bytes::from_static(&src[..k]));
            n -= k;
        }
    }

    /// Forwards line content that is `held` (copied from earlier reads) followed by
    /// `input[from..to]`, skipping its first `skip` bytes, unchanged or as `fill`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn content(
        &mut self,
        input: &Bytes,
        sink: &mut Vec<Bytes>,
        held: &[u8],
        from: usize,
        to: usize,
        skip: usize,
        fill: Option<u8>,
    ) {
        let held_skip = skip.min(held.len());
        let held = &held[held_skip..];
        let from = (from + (skip - held_skip)).min(to);
        match fill {
            Some(f) => self.fill(input, f, held.len() + (to - from), sink),
            None => {
                if !held.is_empty() {
                    self.emit(input, Bytes::copy_from_slice(held), sink);
                }
                self.pass(input, from, to, sink);
            }
        }
    }

    /// One content CR (a CR held at the end of a read that turned out not to end the
    /// line), unchanged or as `fill`.
    pub(super) fn cr(&mut self, input: &Bytes, fill: Option<u8>, sink: &mut Vec<Bytes>) {
        match fill {
            Some(f) => self.fill(input, f, 1, sink),
            None => self.emit(input, Bytes::from_static(b"\r"), sink),
        }
    }
}
