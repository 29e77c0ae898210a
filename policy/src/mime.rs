//! Message content tracking (RFC 5322 header section, RFC 2045/2046 MIME): fed one
//! content line at a time, reports what the rules measure — header line and section
//! lengths, To: recipients, body lines and length, and for every MIME part its
//! content type, transfer encoding and filename length.
//!
//! It does not frame lines (the inspector does, for DATA and BDAT alike), does not
//! see dot-stuffing (lines arrive un-stuffed) and never buffers a whole line: it gets
//! the first [`LINE_HEAD_CAP`] bytes of each line plus the line's full length. State
//! is fixed-size (boundary stack of [`MAX_DEPTH`] RFC 2046 boundaries of at most 70
//! bytes, a bounded field buffer), so memory is bounded whatever the message.

use crate::rules::{
    EncodingSet, ENC_7BIT, ENC_8BIT, ENC_BASE64, ENC_BINARY, ENC_OTHERS, ENC_QUOTED_PRINTABLE,
};

/// How many bytes of a line's start the framing layer keeps for parsing.
pub const LINE_HEAD_CAP: usize = 1024;
/// Nested multiparts followed; deeper ones are treated as opaque body.
pub const MAX_DEPTH: usize = 8;
/// RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
const BOUNDARY_MAX: usize = 70;
/// Bytes of one header field (name excluded, folded lines joined) kept for parsing.
const FIELD_CAP: usize = 1024;
const CTYPE_CAP: usize = 127;

/// One measurement for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation<'a> {
    /// A top-level header line's length, CRLF excluded.
    HeaderLine {
        len: u64,
    },
    /// The top-level header section ended: its length in bytes (line terminators
    /// included, the empty line excluded) and the addresses counted in its To: fields.
    HeaderEnd {
        len: u64,
        to_recipients: u64,
    },
    /// A body line's length (everything after the header section, MIME part headers
    /// included), CRLF excluded.
    BodyLine {
        len: u64,
    },
    /// A part's (or a single-part message's) `type/subtype`, lower-cased.
    MimeType {
        value: &'a [u8],
    },
    MimeEncoding {
        encoding: EncodingSet,
    },
    /// Length of a `filename=` (Content-Disposition) or `name=` (Content-Type) value.
    MimeFilenameLength {
        len: u64,
    },
    /// The header section (bytes so far) just grew past the watch set with
    /// [`MessageScanner::watch_lengths`]: a rule that ends the session on it need not
    /// wait for the end of the header.
    HeaderLengthCrossed {
        len: u64,
    },
    /// The same for the body: a `body length gt N` drop fires as the body crosses N,
    /// not after the whole body has streamed to the server.
    BodyLengthCrossed {
        len: u64,
    },
    /// The message ended; body bytes counted with their line terminators.
    MessageEnd {
        body_len: u64,
    },
}

/// The consumer of observations: returns `false` to stop (the session is being dropped).
pub trait Observer {
    fn observe(&mut self, observation: Observation<'_>) -> bool;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Header,
    Body,
    /// Inside a MIME part's header section.
    PartHeader,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Other,
    To,
    ContentType,
    TransferEncoding,
    Disposition,
}

#[derive(Clone, Copy)]
struct Boundary {
    len: u8,
    bytes: [u8; BOUNDARY_MAX],
}

impl Boundary {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// What a header section (message or part) said about its content.
#[derive(Clone, Copy)]
struct PartInfo {
    ctype_len: u8,
    ctype: [u8; CTYPE_CAP],
    boundary: Option<Boundary>,
    filename_len: Option<u64>,
    encoding: Option<EncodingSet>,
}

impl PartInfo {
    const EMPTY: PartInfo = PartInfo {
        ctype_len: 0,
        ctype: [0; CTYPE_CAP],
        boundary: None,
        filename_len: None,
        encoding: None,
    };
}

/// Streaming counter of addresses in To: fields: commas outside quotes, angle
/// brackets and comments separate non-empty entries (RFC 5322 §3.4).
#[derive(Clone, Copy, Default)]
struct AddressCounter {
    in_quote: bool,
    escaped: bool,
    angle: u8,
    comment: u8,
    entry_nonempty: bool,
    count: u64,
}

impl AddressCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.escaped {
                self.escaped = false;
                continue;
            }
            match b {
                b'\\' if self.in_quote || self.comment > 0 => self.escaped = true,
                b'"' if self.comment == 0 => self.in_quote = !self.in_quote,
                b'(' if !self.in_quote => self.comment = self.comment.saturating_add(1),
                b')' if !self.in_quote => self.comment = self.comment.saturating_sub(1),
                b'<' if !self.in_quote && self.comment == 0 => {
                    self.angle = self.angle.saturating_add(1)
                }
                b'>' if !self.in_quote && self.comment == 0 => {
                    self.angle = self.angle.saturating_sub(1)
                }
                b',' if !self.in_quote && self.angle == 0 && self.comment == 0 => {
                    self.end_entry();
                    continue;
                }
                b' ' | b'\t' => continue,
                _ => {}
            }
            self.entry_nonempty = true;
        }
    }

    fn end_entry(&mut self) {
        if self.entry_nonempty {
            self.count += 1;
        }
        self.entry_nonempty = false;
    }

    /// A To: field ended; quoting state never leaks into the next field.
    fn end_field(&mut self) {
        self.end_entry();
        let count = self.count;
        *self = AddressCounter {
            count,
            ..AddressCounter::default()
        };
    }
}

/// Tracks one message (DATA content or the BDAT stream) line by line.
pub struct MessageScanner {
    section: Section,
    header_len: u64,
    body_len: u64,
    to: AddressCounter,
    field: Field,
    field_len: usize,
    field_buf: [u8; FIELD_CAP],
    part: PartInfo,
    depth: usize,
    boundaries: [Boundary; MAX_DEPTH],
    /// Lengths past which [`Observation::HeaderLengthCrossed`] /
    /// [`Observation::BodyLengthCrossed`] are reported (`u64::MAX`: never).
    header_len_watch: u64,
    body_len_watch: u64,
}

impl Default for MessageScanner {
    fn default() -> Self {
        MessageScanner::new()
    }
}

impl MessageScanner {
    pub fn new() -> MessageScanner {
        MessageScanner {
            section: Section::Header,
            header_len: 0,
            body_len: 0,
            to: AddressCounter::default(),
            field: Field::Other,
            field_len: 0,
            field_buf: [0; FIELD_CAP],
            part: PartInfo::EMPTY,
            depth: 0,
            boundaries: [Boundary {
                len: 0,
                bytes: [0; BOUNDARY_MAX],
            }; MAX_DEPTH],
            header_len_watch: u64::MAX,
            body_len_watch: u64::MAX,
        }
    }

    /// Report the header section / body growing past these lengths as it happens.
    pub fn watch_lengths(&mut self, header: u64, body: u64) {
        self.header_len_watch = header;
        self.body_len_watch = body;
    }

    /// Adds a body line's bytes; false when the observer stopped on the watch.
    #[inline]
    fn add_body(&mut self, wire_len: u64, observer: &mut impl Observer) -> bool {
        let before = self.body_len;
        self.body_len += wire_len;
        // Reported once per message: on the line that crosses the watch.
        before > self.body_len_watch
            || self.body_len <= self.body_len_watch
            || observer.observe(Observation::BodyLengthCrossed { len: self.body_len })
    }

    /// Starts a new message (RFC 5321 transaction boundary).
    pub fn reset(&mut self) {
        self.section = Section::Header;
        self.header_len = 0;
        self.body_len = 0;
        self.to = AddressCounter::default();
        self.field = Field::Other;
        self.field_len = 0;
        self.part = PartInfo::EMPTY;
        self.depth = 0;
    }

    /// Bytes held for parsing (bounded by the fixed field buffer).
    pub fn buffered_bytes(&self) -> usize {
        self.field_len
    }

    /// True while in the top-level header section.
    pub fn in_header(&self) -> bool {
        self.section == Section::Header
    }

    /// One complete content line: `head` is its first bytes (at most [`LINE_HEAD_CAP`],
    /// terminator excluded), `len` its full length without terminator, `wire_len` with
    /// it. Returns `false` when the observer asked to stop.
    #[inline]
    pub fn on_line(
        &mut self,
        head: &[u8],
        len: u64,
        wire_len: u64,
        observer: &mut impl Observer,
    ) -> bool {
        match self.section {
            Section::Body => {
                if !self.add_body(wire_len, observer)
                    || !observer.observe(Observation::BodyLine { len })
                {
                    return false;
                }
                // Only a line starting with "--" can be a boundary (RFC 2046 §5.1.1).
                if self.depth > 0 && head.len() >= 2 && head[0] == b'-' && head[1] == b'-' {
                    self.on_dash_line(head);
                }
                true
            }
            Section::Header => {
                if len == 0 {
                    return self.end_header_section(true, observer);
                }
                let before = self.header_len;
                self.header_len += wire_len;
                let crossed =
                    before <= self.header_len_watch && self.header_len > self.header_len_watch;
                if crossed
                    && !observer.observe(Observation::HeaderLengthCrossed {
                        len: self.header_len,
                    })
                {
                    return false;
                }
                if !observer.observe(Observation::HeaderLine { len }) {
                    return false;
                }
                self.on_header_line(head, true);
                true
            }
            Section::PartHeader => {
                if !self.add_body(wire_len, observer)
                    || !observer.observe(Observation::BodyLine { len })
                {
                    return false;
                }
                if len == 0 {
                    return self.end_header_section(false, observer);
                }
                // A boundary may close a part whose header never ended.
                if head.starts_with(b"--") && self.on_dash_line(head) {
                    return true;
                }
                self.on_header_line(head, false);
                true
            }
        }
    }

    /// Fast path for the common body line: in the body (not a MIME part header) and not
    /// possibly a boundary, a line only adds to the body length. Returns `false` (and
    /// does nothing) when the line needs [`MessageScanner::on_line`].
    #[inline]
    pub fn plain_body_line(&mut self, head: &[u8], wire_len: u64) -> bool {
        if self.section != Section::Body
            || (self.depth > 0 && head.starts_with(b"--"))
            || self.body_len + wire_len > self.body_len_watch
        {
            return false;
        }
        self.body_len += wire_len;
        true
    }

    /// The message ended (end of DATA, or BDAT LAST). A message without a body still
    /// reports its header section.
    pub fn on_end(&mut self, observer: &mut impl Observer) -> bool {
        if self.section == Section::Header && !self.end_header_section(true, observer) {
            return false;
        }
        observer.observe(Observation::MessageEnd {
            body_len: self.body_len,
        })
    }

    /// A body line starting with "--": a boundary of an open multipart?
    /// Returns true when it was one.
    fn on_dash_line(&mut self, head: &[u8]) -> bool {
        let rest = &head[2..];
        // Innermost first: an inner boundary line cannot close an outer part.
        for level in (0..self.depth).rev() {
            let b = self.boundaries[level];
            let b = b.as_slice();
            if rest.len() >= b.len() && &rest[..b.len()] == b {
                let tail = &rest[b.len()..];
                // RFC 2046: transport padding (whitespace) may follow the boundary.
                if tail.starts_with(b"--") {
                    self.depth = level;
                    self.section = Section::Body;
                } else if tail.iter().all(|&c| c == b' ' || c == b'\t') {
                    self.depth = level + 1;
                    self.section = Section::PartHeader;
                    self.field = Field::Other;
                    self.field_len = 0;
                    self.part = PartInfo::EMPTY;
                } else {
                    continue;
                }
                return true;
            }
        }
        false
    }

    fn on_header_line(&mut self, line: &[u8], top: bool) {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if continuation {
            self.append_field(line, top);
            return;
        }
        self.finish_field();
        let Some(colon) = memchr::memchr(b':', line) else {
            self.field = Field::Other;
            return;
        };
        let name = trim(&line[..colon]);
        self.field = if top && name.eq_ignore_ascii_case(b"to") {
            Field::To
        } else if name.eq_ignore_ascii_case(b"content-type") {
            Field::ContentType
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            Field::TransferEncoding
        } else if name.eq_ignore_ascii_case(b"content-disposition") {
            Field::Disposition
        } else {
            Field::Other
        };
        self.field_len = 0;
        self.append_field(&line[colon + 1..], top);
    }

    fn append_field(&mut self, bytes: &[u8], top: bool) {
        match self.field {
            Field::Other => {}
            Field::To if top => self.to.feed(bytes),
            _ => {
                let room = FIELD_CAP - self.field_len;
                let n = bytes.len().min(room);
                self.field_buf[self.field_len..self.field_len + n].copy_from_slice(&bytes[..n]);
                self.field_len += n;
            }
        }
    }

    /// A header field ended: parse what the MIME rules need from it.
    fn finish_field(&mut self) {
        let value = &self.field_buf[..self.field_len];
        match self.field {
            Field::Other => {}
            Field::To => self.to.end_field(),
            Field::ContentType => {
                let main = trim(value.split(|&b| b == b';').next().unwrap_or(b""));
                let n = main.len().min(CTYPE_CAP);
                for (dst, src) in self.part.ctype.iter_mut().zip(&main[..n]) {
                    *dst = src.to_ascii_lowercase();
                }
                self.part.ctype_len = n as u8;
                if let Some(b) = param(value, b"boundary") {
                    if !b.is_empty() && b.len() <= BOUNDARY_MAX {
                        let mut bytes = [0; BOUNDARY_MAX];
                        bytes[..b.len()].copy_from_slice(b);
                        self.part.boundary = Some(Boundary {
                            len: b.len() as u8,
                            bytes,
                        });
                    }
                }
                if self.part.filename_len.is_none() {
                    if let Some(name) = filename_param(value, b"name") {
                        self.part.filename_len = Some(name);
                    }
                }
            }
            Field::TransferEncoding => {
                let token = trim(value);
                self.part.encoding = Some(encoding_of(token));
            }
            Field::Disposition => {
                // Content-Disposition's filename wins over Content-Type's name.
                if let Some(name) = filename_param(value, b"filename") {
                    self.part.filename_len = Some(name);
                }
            }
        }
        self.field = Field::Other;
        self.field_len = 0;
    }

    fn end_header_section(&mut self, top: bool, observer: &mut impl Observer) -> bool {
        self.finish_field();
        if top
            && !observer.observe(Observation::HeaderEnd {
                len: self.header_len,
                to_recipients: self.to.count,
            })
        {
            return false;
        }
        self.section = Section::Body;
        let part = self.part;
        self.part = PartInfo::EMPTY;
        if part.ctype_len > 0
            && !observer.observe(Observation::MimeType {
                value: &part.ctype[..part.ctype_len as usize],
            })
        {
            return false;
        }
        // A part without Content-Transfer-Encoding is 7bit (RFC 2045 §6.1), so an
        // operator's `match MIME encoding 7bit` sees it too.
        let encoding = part.encoding.unwrap_or(ENC_7BIT);
        if !observer.observe(Observation::MimeEncoding { encoding }) {
            return false;
        }
        if let Some(len) = part.filename_len {
            if !observer.observe(Observation::MimeFilenameLength { len }) {
                return false;
            }
        }
        if let Some(boundary) = part.boundary {
            let is_multipart = part.ctype[..part.ctype_len as usize].starts_with(b"multipart/");
            if is_multipart && self.depth < MAX_DEPTH {
                self.boundaries[self.depth] = boundary;
                self.depth += 1;
            }
        }
        true
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// The value of `name=` in a `;`-separated parameter list (RFC 2045 §5.1), unquoted.
fn param<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    for part in value.split(|&b| b == b';').skip(1) {
        let part = trim(part);
        let Some(eq) = memchr::memchr(b'=', part) else {
            continue;
        };
        if trim(&part[..eq]).eq_ignore_ascii_case(name) {
            let v = trim(&part[eq + 1..]);
            return Some(match v {
                [b'"', inner @ ..] => match memchr::memchr(b'"', inner) {
                    Some(end) => &inner[..end],
                    None => inner,
                },
                _ => v,
            });
        }
    }
    None
}

/// Length of a filename parameter, plain (`filename=`) or RFC 2231 extended
/// (`filename*=charset''value`, whose encoded value is measured).
fn filename_param(value: &[u8], name: &[u8]) -> Option<u64> {
    if let Some(v) = param(value, name) {
        return Some(v.len() as u64);
    }
    let mut extended = [0u8; 16];
    if name.len() + 1 > extended.len() {
        return None;
    }
    extended[..name.len()].copy_from_slice(name);
    extended[name.len()] = b'*';
    param(value, &extended[..name.len() + 1]).map(|v| {
        // Skip `charset'language'`.
        let mut quotes = v.iter().enumerate().filter(|(_, &b)| b == b'\'');
        match (quotes.next(), quotes.next()) {
            (Some(_), Some((second, _))) => (v.len() - second - 1) as u64,
            _ => v.len() as u64,
        }
    })
}

fn encoding_of(token: &[u8]) -> EncodingSet {
    const KNOWN: [(&[u8], EncodingSet); 5] = [
        (b"7bit", ENC_7BIT),
        (b"8bit", ENC_8BIT),
        (b"base64", ENC_BASE64),
        (b"binary", ENC_BINARY),
        (b"quoted-printable", ENC_QUOTED_PRINTABLE),
    ];
    KNOWN
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(token))
        .map_or(ENC_OTHERS, |&(_, bit)| bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Vec<String>);

    impl Observer for Log {
        fn observe(&mut self, o: Observation<'_>) -> bool {
            self.0.push(match o {
                Observation::MimeType { value } => {
                    format!("type {}", String::from_utf8_lossy(value))
                }
                other => format!("{other:?}"),
            });
            true
        }
    }

    fn feed(text: &str) -> Vec<String> {
        let mut scanner = MessageScanner::new();
        let mut log = Log::default();
        for line in text.split("\r\n") {
            let head = &line.as_bytes()[..line.len().min(LINE_HEAD_CAP)];
            assert!(scanner.on_line(head, line.len() as u64, line.len() as u64 + 2, &mut log));
        }
        assert!(scanner.on_end(&mut log));
        log.0
    }

    #[test]
    fn header_and_body_split_at_first_empty_line() {
        let log =
            feed("Subject: hi\r\nTo: a@x, \"B, C\" <b@x>,\r\n\t(c) c@x\r\n\r\nbody\r\n\r\nmore");
        assert_eq!(
            log,
            vec![
                "HeaderLine { len: 11 }",
                "HeaderLine { len: 22 }",
                "HeaderLine { len: 8 }",
                "HeaderEnd { len: 47, to_recipients: 3 }",
                "MimeEncoding { encoding: 1 }",
                "BodyLine { len: 4 }",
                "BodyLine { len: 0 }",
                "BodyLine { len: 4 }",
                "MessageEnd { body_len: 14 }",
            ]
        );
    }

    #[test]
    fn multipart_parts_report_type_encoding_and_filename() {
        let msg = "Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n\
                   Content-Type: text/plain\r\n\r\nhello\r\n--b1\r\n\
                   Content-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n\
                   Content-Type: Application/PDF; name=\"x.pdf\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\
                   Content-Disposition: attachment; filename=\"report-2024.pdf\"\r\n\r\nAAAA\r\n\
                   --b2--\r\n--b1--\r\nepilogue";
        let log: Vec<String> = feed(msg)
            .into_iter()
            .filter(|l| !l.starts_with("BodyLine") && !l.starts_with("HeaderLine"))
            .collect();
        assert_eq!(
            log,
            vec![
                "HeaderEnd { len: 48, to_recipients: 0 }",
                "type multipart/mixed",
                "MimeEncoding { encoding: 1 }", // no header: 7bit (RFC 2045 §6.1)
                "type text/plain",
                "MimeEncoding { encoding: 1 }",
                "type multipart/alternative",
                "MimeEncoding { encoding: 1 }",
                "type application/pdf",
                "MimeEncoding { encoding: 4 }",
                "MimeFilenameLength { len: 15 }",
                "MessageEnd { body_len: 290 }",
            ]
        );
    }

    #[test]
    fn boundary_like_lines_that_are_not_boundaries_are_body() {
        let msg = "Content-Type: multipart/mixed; boundary=abc\r\n\r\n--abcd\r\nContent-Type: text/x\r\n\r\n--abc\r\nContent-Type: text/y\r\n\r\n";
        let types: Vec<String> = feed(msg)
            .into_iter()
            .filter(|l| l.starts_with("type"))
            .collect();
        assert_eq!(types, vec!["type multipart/mixed", "type text/y"]);
    }

    #[test]
    fn rfc2231_filename_and_unknown_encoding() {
        let msg = "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC.txt\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n";
        let log = feed(msg);
        assert!(log.contains(&"MimeFilenameLength { len: 13 }".to_string()));
        assert!(log.contains(&format!("MimeEncoding {{ encoding: {ENC_OTHERS} }}")));
    }

    #[test]
    fn message_without_body_reports_header_end() {
        let log = feed("Subject: x");
        assert_eq!(log[1], "HeaderEnd { len: 12, to_recipients: 0 }");
    }
}
