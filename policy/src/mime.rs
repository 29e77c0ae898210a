//! Message content tracking (RFC 5322 header section, RFC 2045/2046 MIME): fed the
//! bytes of each content line as they arrive and told where each line ends, it reports
//! what the rules measure — header line and section lengths, To: recipients, body lines
//! and length, and for every Content-Type and Content-Disposition field its content
//! type and filename lengths, per part its transfer encoding.
//!
//! It does not frame lines (the inspector does, for DATA and BDAT alike) and does not
//! see dot-stuffing (lines arrive un-stuffed). It never buffers a line or a header
//! field: MIME fields are parsed byte by byte as they stream (RFC 2045 §5.1 parameters,
//! quoted strings, comments, RFC 2231 `name*=` and `name*0*=` continuations measured
//! as their joined length), so a long parameter cannot push `filename=` out of view.
//! State is fixed-size: a boundary stack of [`MAX_DEPTH`] boundaries of at most
//! [`BOUNDARY_CAP`] bytes, a 127-byte content type, a few counters. Where one of those
//! bounds stops the parse, it says so ([`Observation::MimeParseLimit`]) rather than
//! going quiet.
//!
//! Observations from a header field are reported when the field ends, at the end of the
//! line that shows it ended (the next field's line, or the empty line): a rule that
//! stops the session there cuts at a line end, wherever reads split the message.

use crate::rules::{
    EncodingSet, ENC_7BIT, ENC_8BIT, ENC_BASE64, ENC_BINARY, ENC_OTHERS, ENC_QUOTED_PRINTABLE,
};

/// How many bytes of a line's start the inspector keeps for its own checks (end of
/// data, dot-stuffing). This parser gets every byte of every line.
pub const LINE_HEAD_CAP: usize = 1024;
/// Nested multiparts followed; a deeper one is a [`ParseLimit::Depth`].
pub const MAX_DEPTH: usize = 8;
/// The longest boundary followed. RFC 2046 §5.1.1 allows 70 characters, but mailers
/// that write longer ones exist and readers follow them, so a 71-character boundary
/// must not hide its parts; past this, [`ParseLimit::BoundaryLength`].
pub const BOUNDARY_CAP: usize = 250;
const CTYPE_CAP: usize = 127;
const PARAM_NAME_CAP: usize = 48;
const FIELD_NAME_CAP: usize = 32;
const ENCODING_CAP: usize = 32;
/// Filename parameters judged one by one in one header field; more is a
/// [`ParseLimit::Parameters`] and the longest of the rest is judged.
const FILENAMES_PER_FIELD: usize = 8;
/// Bytes of a body line's start kept to recognise a boundary line.
const HEAD_KEEP: usize = BOUNDARY_CAP + 4;

/// Where a fixed bound stopped the MIME parse (the value of a `MIME parse-limit` event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ParseLimit {
    /// A multipart nested deeper than [`MAX_DEPTH`]: its parts are not followed.
    Depth = 1,
    /// A boundary longer than [`BOUNDARY_CAP`]: its parts are not followed.
    BoundaryLength = 2,
    /// A content type longer than 127 bytes: judged on its first 127.
    TypeLength = 3,
    /// More filename parameters in one field than are judged one by one.
    Parameters = 4,
    /// A second multipart boundary in one header section: only the first is followed.
    ConflictingBoundaries = 5,
}

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
    /// A Content-Type field's `type/subtype`, lower-cased (every field, not only the
    /// first of a part).
    MimeType {
        value: &'a [u8],
    },
    MimeEncoding {
        encoding: EncodingSet,
    },
    /// Length of a `filename=` (Content-Disposition) or `name=` (Content-Type) value;
    /// RFC 2231 `filename*=` without its `charset'language'` prefix, continuations
    /// (`filename*0*=`, `filename*1=`, ...) joined. Every occurrence.
    MimeFilenameLength {
        len: u64,
    },
    /// A fixed bound stopped the parse.
    MimeParseLimit {
        limit: ParseLimit,
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

/// Where the current header line stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HeaderLine {
    /// Nothing of it seen yet.
    Start,
    /// In the field name (before the colon).
    Name,
    /// In a field's value (after the colon, or a folded continuation line).
    Value,
}

#[derive(Clone, Copy)]
struct Boundary {
    len: u8,
    bytes: [u8; BOUNDARY_CAP],
}

impl Boundary {
    const EMPTY: Boundary = Boundary {
        len: 0,
        bytes: [0; BOUNDARY_CAP],
    };

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// What a header section (message or part) said about its structure.
#[derive(Clone, Copy)]
struct PartInfo {
    boundary: Option<Boundary>,
    encoding: Option<EncodingSet>,
}

impl PartInfo {
    const EMPTY: PartInfo = PartInfo {
        boundary: None,
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

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Where a Content-Type / Content-Disposition value parse stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ParamState {
    /// The `type/subtype` (or disposition type) before the first `;`.
    Main,
    /// A parameter name, before its `=`.
    Name,
    /// After `=`, before the value.
    BeforeValue,
    Token,
    Quoted,
    /// After a backslash inside a quoted string.
    Escaped,
    /// A value ended; waiting for the next `;`.
    AfterValue,
}

/// What the parameter whose value is being read matters for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ValueKind {
    Other,
    Boundary,
    /// `filename` / `name`; `extended` for RFC 2231 `*` forms (a `charset'lang'`
    /// prefix to skip), `segment` for continuations (`*N`): 0 for the first.
    Filename {
        extended: bool,
        segment: Option<u32>,
    },
}

/// A streaming RFC 2045 §5.1 / RFC 2183 parameter parser for one header field.
#[derive(Clone, Copy)]
struct Params {
    state: ParamState,
    /// Nesting depth of a `( comment )` outside quoted strings.
    comment: u8,
    main: [u8; CTYPE_CAP],
    main_len: u8,
    main_over: bool,
    name: [u8; PARAM_NAME_CAP],
    name_len: u8,
    name_over: bool,
    /// `filename` for Content-Disposition, `name` for Content-Type.
    filename_param: &'static [u8],
    wants_boundary: bool,
    value: ValueKind,
    value_len: u64,
    quotes: u8,
    after_quotes: u64,
    keep: Boundary,
    keep_over: bool,
    // ---- results ----
    boundary: Option<Boundary>,
    boundary_over: bool,
    filenames: [u64; FILENAMES_PER_FIELD],
    filename_count: u8,
    filenames_over: bool,
    /// Joined length of the continuation segments seen.
    continued: Option<u64>,
}

impl Params {
    const EMPTY: Params = Params {
        state: ParamState::Main,
        comment: 0,
        main: [0; CTYPE_CAP],
        main_len: 0,
        main_over: false,
        name: [0; PARAM_NAME_CAP],
        name_len: 0,
        name_over: false,
        filename_param: b"filename",
        wants_boundary: false,
        value: ValueKind::Other,
        value_len: 0,
        quotes: 0,
        after_quotes: 0,
        keep: Boundary::EMPTY,
        keep_over: false,
        boundary: None,
        boundary_over: false,
        filenames: [0; FILENAMES_PER_FIELD],
        filename_count: 0,
        filenames_over: false,
        continued: None,
    };

    fn begin(&mut self, field: Field) {
        // Every field Params::EMPTY sets but the byte arrays, which are only read up
        // to their lengths (reset here): a field does not copy the whole parser.
        self.state = ParamState::Main;
        self.comment = 0;
        self.main_len = 0;
        self.main_over = false;
        self.name_len = 0;
        self.name_over = false;
        self.value = ValueKind::Other;
        self.value_len = 0;
        self.quotes = 0;
        self.after_quotes = 0;
        self.keep.len = 0;
        self.keep_over = false;
        self.boundary = None;
        self.boundary_over = false;
        self.filename_count = 0;
        self.filenames_over = false;
        self.continued = None;
        self.filename_param = if field == Field::Disposition {
            b"filename"
        } else {
            b"name"
        };
        self.wants_boundary = field == Field::ContentType;
    }

    fn main_type(&self) -> &[u8] {
        &self.main[..self.main_len as usize]
    }

    fn feed(&mut self, bytes: &[u8]) {
        use ParamState as S;
        for &b in bytes {
            if self.comment > 0 && !matches!(self.state, S::Quoted | S::Escaped) {
                match b {
                    b'(' => self.comment = self.comment.saturating_add(1),
                    b')' => self.comment -= 1,
                    _ => {}
                }
                continue;
            }
            match self.state {
                S::Main => match b {
                    b';' => self.start_name(),
                    b'(' => self.comment = 1,
                    // `type/subtype` has no spaces: one ends it.
                    _ if is_space(b) => {
                        if self.main_len > 0 {
                            self.state = S::AfterValue;
                        }
                    }
                    _ => match self.main.get_mut(self.main_len as usize) {
                        Some(slot) => {
                            *slot = b.to_ascii_lowercase();
                            self.main_len += 1;
                        }
                        None => self.main_over = true,
                    },
                },
                S::Name => match b {
                    b'=' => self.start_value(),
                    b';' => self.start_name(),
                    b'(' => self.comment = 1,
                    _ if is_space(b) => {}
                    _ => match self.name.get_mut(self.name_len as usize) {
                        Some(slot) => {
                            *slot = b.to_ascii_lowercase();
                            self.name_len += 1;
                        }
                        None => self.name_over = true,
                    },
                },
                S::BeforeValue => match b {
                    b'"' => self.state = S::Quoted,
                    b';' => {
                        self.end_value();
                        self.start_name();
                    }
                    b'(' => {
                        self.end_value();
                        self.comment = 1;
                    }
                    _ if is_space(b) => {}
                    _ => {
                        self.state = S::Token;
                        self.value_byte(b);
                    }
                },
                S::Token => match b {
                    b';' => {
                        self.end_value();
                        self.start_name();
                    }
                    b'(' => {
                        self.end_value();
                        self.comment = 1;
                    }
                    _ if is_space(b) => self.end_value(),
                    _ => self.value_byte(b),
                },
                S::Quoted => match b {
                    b'\\' => self.state = S::Escaped,
                    b'"' => self.end_value(),
                    _ => self.value_byte(b),
                },
                S::Escaped => {
                    self.value_byte(b);
                    self.state = S::Quoted;
                }
                S::AfterValue => match b {
                    b';' => self.start_name(),
                    b'(' => self.comment = 1,
                    _ => {}
                },
            }
        }
    }

    fn start_name(&mut self) {
        self.state = ParamState::Name;
        self.name_len = 0;
        self.name_over = false;
    }

    /// The name is complete (`=` seen): what is its value for?
    fn start_value(&mut self) {
        self.state = ParamState::BeforeValue;
        self.value_len = 0;
        self.quotes = 0;
        self.after_quotes = 0;
        self.keep.len = 0;
        self.keep_over = false;
        let name = &self.name[..self.name_len as usize];
        let fname = self.filename_param;
        self.value = if self.wants_boundary && name == b"boundary" && !self.name_over {
            ValueKind::Boundary
        } else if name.len() > fname.len() && name.starts_with(fname) && name[fname.len()] == b'*' {
            let rest = &name[fname.len() + 1..];
            let (digits, extended) = match rest.strip_suffix(b"*") {
                Some(d) => (d, true),
                None => (rest, false),
            };
            if self.name_over {
                // A segment number too long to keep: a continuation all the same,
                // measured whole.
                ValueKind::Filename {
                    extended: false,
                    segment: Some(u32::MAX),
                }
            } else if rest.is_empty() || rest == b"*" {
                ValueKind::Filename {
                    extended: true,
                    segment: None,
                }
            } else if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                let n = digits.iter().fold(0u32, |n, &d| {
                    n.saturating_mul(10).saturating_add((d - b'0') as u32)
                });
                ValueKind::Filename {
                    extended,
                    segment: Some(n),
                }
            } else {
                ValueKind::Other
            }
        } else if name == fname && !self.name_over {
            ValueKind::Filename {
                extended: false,
                segment: None,
            }
        } else {
            ValueKind::Other
        };
    }

    #[inline]
    fn value_byte(&mut self, b: u8) {
        self.value_len += 1;
        if self.quotes < 2 {
            if b == b'\'' {
                self.quotes += 1;
            }
        } else {
            self.after_quotes += 1;
        }
        if self.value == ValueKind::Boundary {
            match self.keep.bytes.get_mut(self.keep.len as usize) {
                Some(slot) => {
                    *slot = b;
                    self.keep.len += 1;
                }
                None => self.keep_over = true,
            }
        }
    }

    fn end_value(&mut self) {
        self.state = ParamState::AfterValue;
        match self.value {
            ValueKind::Other => {}
            ValueKind::Boundary => {
                if self.keep_over {
                    self.boundary_over = true;
                } else if self.keep.len > 0 && self.boundary.is_none() {
                    self.boundary = Some(self.keep);
                }
            }
            ValueKind::Filename { extended, segment } => {
                // Only the first segment (or an unsegmented `*=`) has the prefix.
                let prefixed = extended && segment.is_none_or(|n| n == 0) && self.quotes >= 2;
                let len = if prefixed {
                    self.after_quotes
                } else {
                    self.value_len
                };
                match segment {
                    Some(_) => self.continued = Some(self.continued.unwrap_or(0) + len),
                    None => self.push_filename(len),
                }
            }
        }
        self.value = ValueKind::Other;
    }

    fn push_filename(&mut self, len: u64) {
        let n = self.filename_count as usize;
        if n < FILENAMES_PER_FIELD {
            self.filenames[n] = len;
            self.filename_count += 1;
        } else {
            self.filenames_over = true;
            let last = &mut self.filenames[FILENAMES_PER_FIELD - 1];
            *last = (*last).max(len);
        }
    }

    /// The field ended: a value still open (unclosed quote, token to the end) ends too.
    fn finish(&mut self) {
        if matches!(
            self.state,
            ParamState::BeforeValue | ParamState::Token | ParamState::Quoted | ParamState::Escaped
        ) {
            self.end_value();
        }
        if let Some(len) = self.continued.take() {
            self.push_filename(len);
        }
    }
}

/// What a finished header field reports, held until the end of the line that
/// finished it.
#[derive(Clone, Copy)]
struct Pending {
    mime_type: Option<([u8; CTYPE_CAP], u8)>,
    filenames: [u64; FILENAMES_PER_FIELD],
    filename_count: u8,
    /// Bit `1 << limit` for each [`ParseLimit`] hit.
    limits: u8,
}

impl Pending {
    const EMPTY: Pending = Pending {
        mime_type: None,
        filenames: [0; FILENAMES_PER_FIELD],
        filename_count: 0,
        limits: 0,
    };
}

const LIMITS: [ParseLimit; 5] = [
    ParseLimit::Depth,
    ParseLimit::BoundaryLength,
    ParseLimit::TypeLength,
    ParseLimit::Parameters,
    ParseLimit::ConflictingBoundaries,
];

/// What decides whether whole body lines may skip the full path (see
/// [`MessageScanner::plain_body_run`]).
#[derive(Clone, Copy, Debug)]
pub struct PlainBodyRun {
    /// A multipart is open: a line starting with `--` may be its boundary.
    boundaries_open: bool,
    /// Body bytes that may still be added before the length watch is crossed.
    pub room: u64,
}

impl PlainBodyRun {
    /// `line` (terminator excluded) adds to the body only: it cannot be a boundary and
    /// its `wire_len` does not cross the watch (`room` counts down as lines are taken).
    #[inline]
    pub fn takes(&self, line: &[u8], wire_len: u64) -> bool {
        !(self.boundaries_open && line.starts_with(b"--")) && wire_len <= self.room
    }
}

/// Tracks one message (DATA content or the BDAT stream) line by line.
pub struct MessageScanner {
    section: Section,
    header_len: u64,
    body_len: u64,
    to: AddressCounter,
    field: Field,
    params: Params,
    encoding: [u8; ENCODING_CAP],
    encoding_len: u8,
    encoding_over: bool,
    pending: Pending,
    part: PartInfo,
    depth: usize,
    boundaries: [Boundary; MAX_DEPTH],
    // ---- the current line ----
    /// Bytes of it seen so far.
    line_pos: u64,
    header_line: HeaderLine,
    field_name: [u8; FIELD_NAME_CAP],
    field_name_len: u8,
    field_name_over: bool,
    /// Its first bytes when it starts with `-` (a boundary line, maybe), and whether
    /// everything past them is transport padding.
    head: [u8; HEAD_KEEP],
    head_len: u16,
    dash_line: bool,
    tail_blank: bool,
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
            params: Params::EMPTY,
            encoding: [0; ENCODING_CAP],
            encoding_len: 0,
            encoding_over: false,
            pending: Pending::EMPTY,
            part: PartInfo::EMPTY,
            depth: 0,
            boundaries: [Boundary::EMPTY; MAX_DEPTH],
            line_pos: 0,
            header_line: HeaderLine::Start,
            field_name: [0; FIELD_NAME_CAP],
            field_name_len: 0,
            field_name_over: false,
            head: [0; HEAD_KEEP],
            head_len: 0,
            dash_line: false,
            tail_blank: true,
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
        self.pending = Pending::EMPTY;
        self.part = PartInfo::EMPTY;
        self.depth = 0;
        self.end_line_state();
    }

    /// Bytes held for parsing (bounded by the fixed buffers).
    pub fn buffered_bytes(&self) -> usize {
        self.head_len as usize
    }

    /// True while in the top-level header section.
    pub fn in_header(&self) -> bool {
        self.section == Section::Header
    }

    /// The next bytes of the current content line (terminator excluded, dot-stuffing
    /// undone). Any number of calls per line, then [`MessageScanner::line_end`].
    #[inline]
    pub fn line_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.section != Section::Body || self.depth > 0 {
            self.keep_head(bytes);
        }
        if self.section != Section::Body {
            self.header_bytes(bytes);
        }
        self.line_pos += bytes.len() as u64;
    }

    /// The current line ended: `len` is its length without terminator, `wire_len` with
    /// it. Returns `false` when the observer asked to stop.
    pub fn line_end(&mut self, len: u64, wire_len: u64, observer: &mut impl Observer) -> bool {
        let ok = self.judge_line(len, wire_len, observer);
        self.end_line_state();
        ok
    }

    /// One whole content line (terminator excluded): [`MessageScanner::line_bytes`] then
    /// [`MessageScanner::line_end`].
    pub fn on_line(
        &mut self,
        line: &[u8],
        len: u64,
        wire_len: u64,
        observer: &mut impl Observer,
    ) -> bool {
        self.line_bytes(line);
        self.line_end(len, wire_len, observer)
    }

    fn judge_line(&mut self, len: u64, wire_len: u64, observer: &mut impl Observer) -> bool {
        match self.section {
            Section::Body => {
                if !self.add_body(wire_len, observer)
                    || !observer.observe(Observation::BodyLine { len })
                {
                    return false;
                }
                // Only a line starting with "--" can be a boundary (RFC 2046 §5.1.1).
                if self.depth > 0 && self.dash_line {
                    self.on_dash_line();
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
                observer.observe(Observation::HeaderLine { len }) && self.flush(observer)
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
                if !self.flush(observer) {
                    return false;
                }
                // A boundary may close a part whose header never ended.
                if self.dash_line {
                    self.on_dash_line();
                }
                true
            }
        }
    }

    fn end_line_state(&mut self) {
        self.line_pos = 0;
        self.header_line = HeaderLine::Start;
        self.head_len = 0;
        self.dash_line = false;
        self.tail_blank = true;
    }

    /// Fast path for the common body line: in the body (not a MIME part header) and not
    /// possibly a boundary, a whole line only adds to the body length. `None` when no
    /// line can take it here (a header section, or a line begun); else what decides
    /// each line, checked by the caller, which then adds the lines it took with
    /// [`MessageScanner::add_plain_body`].
    #[inline]
    pub fn plain_body_run(&self) -> Option<PlainBodyRun> {
        (self.section == Section::Body && self.line_pos == 0).then_some(PlainBodyRun {
            boundaries_open: self.depth > 0,
            room: self.body_len_watch.saturating_sub(self.body_len),
        })
    }

    /// Whole body lines taken through [`MessageScanner::plain_body_run`]: `wire_len`
    /// bytes, terminators included.
    #[inline]
    pub fn add_plain_body(&mut self, wire_len: u64) {
        self.body_len += wire_len;
    }

    /// The message ended (end of DATA, or BDAT LAST). A message without a body still
    /// reports its header section, and a part header cut short still its fields.
    pub fn on_end(&mut self, observer: &mut impl Observer) -> bool {
        match self.section {
            Section::Header => {
                if !self.end_header_section(true, observer) {
                    return false;
                }
            }
            Section::PartHeader => {
                self.finish_field();
                if !self.flush(observer) {
                    return false;
                }
            }
            Section::Body => {}
        }
        observer.observe(Observation::MessageEnd {
            body_len: self.body_len,
        })
    }

    /// Keeps the start of a line that starts with `-`, and whether the rest is blank.
    fn keep_head(&mut self, bytes: &[u8]) {
        if self.line_pos == 0 {
            self.dash_line = bytes[0] == b'-';
        }
        if !self.dash_line {
            return;
        }
        let at = self.head_len as usize;
        let n = bytes.len().min(HEAD_KEEP - at);
        self.head[at..at + n].copy_from_slice(&bytes[..n]);
        self.head_len += n as u16;
        if self.tail_blank {
            self.tail_blank = bytes[n..].iter().all(|&c| c == b' ' || c == b'\t');
        }
    }

    /// A body line starting with "--" ended: a boundary of an open multipart?
    fn on_dash_line(&mut self) -> bool {
        let head = &self.head[..self.head_len as usize];
        if !head.starts_with(b"--") {
            return false;
        }
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
                } else if self.tail_blank && tail.iter().all(|&c| c == b' ' || c == b'\t') {
                    self.depth = level + 1;
                    self.section = Section::PartHeader;
                    self.field = Field::Other;
                    self.part = PartInfo::EMPTY;
                } else {
                    continue;
                }
                return true;
            }
        }
        false
    }

    /// Header section bytes: field names at line starts, values streamed to the
    /// field's parser.
    fn header_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(&b) = rest.first() {
            match self.header_line {
                HeaderLine::Start => {
                    if b == b' ' || b == b'\t' {
                        // Folded: the current field goes on (RFC 5322 §2.2.3).
                        self.header_line = HeaderLine::Value;
                        continue;
                    }
                    self.finish_field();
                    self.header_line = HeaderLine::Name;
                    self.field_name_len = 0;
                    self.field_name_over = false;
                }
                HeaderLine::Name => {
                    let colon = memchr::memchr(b':', rest);
                    let name = &rest[..colon.unwrap_or(rest.len())];
                    let at = self.field_name_len as usize;
                    let n = name.len().min(FIELD_NAME_CAP - at);
                    self.field_name[at..at + n].copy_from_slice(&name[..n]);
                    self.field_name_len += n as u8;
                    self.field_name_over |= n < name.len();
                    let Some(colon) = colon else { return };
                    self.start_field();
                    self.header_line = HeaderLine::Value;
                    rest = &rest[colon + 1..];
                }
                HeaderLine::Value => {
                    self.field_value(rest);
                    return;
                }
            }
        }
    }

    fn start_field(&mut self) {
        let name = trim(&self.field_name[..self.field_name_len as usize]);
        let top = self.section == Section::Header;
        self.field = if self.field_name_over {
            Field::Other
        } else if top && name.eq_ignore_ascii_case(b"to") {
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
        match self.field {
            Field::ContentType | Field::Disposition => self.params.begin(self.field),
            Field::TransferEncoding => {
                self.encoding_len = 0;
                self.encoding_over = false;
            }
            Field::Other | Field::To => {}
        }
    }

    fn field_value(&mut self, bytes: &[u8]) {
        match self.field {
            Field::Other => {}
            Field::To => self.to.feed(bytes),
            Field::ContentType | Field::Disposition => self.params.feed(bytes),
            Field::TransferEncoding => {
                for &b in bytes.iter().filter(|&&b| !is_space(b)) {
                    match self.encoding.get_mut(self.encoding_len as usize) {
                        Some(slot) => {
                            *slot = b;
                            self.encoding_len += 1;
                        }
                        None => self.encoding_over = true,
                    }
                }
            }
        }
    }

    /// A header field ended: what it said goes to `pending` (reported at this line's
    /// end) and to the part's structure.
    fn finish_field(&mut self) {
        match self.field {
            Field::Other => {}
            Field::To => self.to.end_field(),
            Field::TransferEncoding => {
                self.part.encoding = Some(if self.encoding_over {
                    ENC_OTHERS
                } else {
                    encoding_of(&self.encoding[..self.encoding_len as usize])
                });
            }
            Field::ContentType | Field::Disposition => {
                let p = &mut self.params;
                p.finish();
                let pending = &mut self.pending;
                let n = p.filename_count as usize;
                pending.filenames[..n].copy_from_slice(&p.filenames[..n]);
                pending.filename_count = n as u8;
                if p.filenames_over {
                    pending.limits |= 1 << ParseLimit::Parameters as u8;
                }
                if self.field == Field::ContentType {
                    if p.main_len > 0 {
                        pending.mime_type = Some((p.main, p.main_len));
                    }
                    if p.main_over {
                        pending.limits |= 1 << ParseLimit::TypeLength as u8;
                    }
                    if p.main_type().starts_with(b"multipart/") {
                        if p.boundary_over {
                            pending.limits |= 1 << ParseLimit::BoundaryLength as u8;
                        } else if let Some(b) = p.boundary {
                            if self.part.boundary.is_some() {
                                pending.limits |= 1 << ParseLimit::ConflictingBoundaries as u8;
                            } else {
                                self.part.boundary = Some(b);
                            }
                        }
                    }
                }
            }
        }
        self.field = Field::Other;
    }

    /// Reports what finished fields said.
    fn flush(&mut self, observer: &mut impl Observer) -> bool {
        let waiting = &self.pending;
        if waiting.mime_type.is_none() && waiting.filename_count == 0 && waiting.limits == 0 {
            return true;
        }
        let pending = std::mem::replace(&mut self.pending, Pending::EMPTY);
        if let Some((value, len)) = pending.mime_type {
            let value = &value[..len as usize];
            if !observer.observe(Observation::MimeType { value }) {
                return false;
            }
        }
        for &len in &pending.filenames[..pending.filename_count as usize] {
            if !observer.observe(Observation::MimeFilenameLength { len }) {
                return false;
            }
        }
        self.report_limits(pending.limits, observer)
    }

    fn report_limits(&mut self, limits: u8, observer: &mut impl Observer) -> bool {
        LIMITS
            .iter()
            .filter(|&&l| limits & (1 << l as u8) != 0)
            .all(|&limit| observer.observe(Observation::MimeParseLimit { limit }))
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
        if !self.flush(observer) {
            return false;
        }
        self.section = Section::Body;
        let part = self.part;
        self.part = PartInfo::EMPTY;
        // A part without Content-Transfer-Encoding is 7bit (RFC 2045 §6.1), so an
        // operator's `match MIME encoding 7bit` sees it too.
        let encoding = part.encoding.unwrap_or(ENC_7BIT);
        if !observer.observe(Observation::MimeEncoding { encoding }) {
            return false;
        }
        if let Some(boundary) = part.boundary {
            if self.depth < MAX_DEPTH {
                self.boundaries[self.depth] = boundary;
                self.depth += 1;
            } else {
                let limit = ParseLimit::Depth;
                return observer.observe(Observation::MimeParseLimit { limit });
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
            let len = line.len() as u64;
            assert!(scanner.on_line(line.as_bytes(), len, len + 2, &mut log));
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
                // Every occurrence: Content-Type's name= and Content-Disposition's
                // filename=, each when its field ends.
                "MimeFilenameLength { len: 5 }",
                "MimeFilenameLength { len: 15 }",
                "MimeEncoding { encoding: 4 }",
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

    /// The filename lengths and parse limits a message reports, fed one byte at a time
    /// (and checked against feeding whole lines).
    fn judged(msg: &str) -> Vec<String> {
        let whole = feed(msg);
        let mut scanner = MessageScanner::new();
        let mut log = Log::default();
        for line in msg.split("\r\n") {
            for b in line.as_bytes().chunks(1) {
                scanner.line_bytes(b);
            }
            assert!(scanner.line_end(line.len() as u64, line.len() as u64 + 2, &mut log));
        }
        assert!(scanner.on_end(&mut log));
        assert_eq!(log.0, whole, "byte by byte equals whole lines");
        whole
            .into_iter()
            .filter(|l| l.starts_with("MimeFilename") || l.starts_with("MimeParseLimit"))
            .collect()
    }

    #[test]
    fn every_content_type_and_disposition_occurrence_is_judged() {
        let msg = "Content-Type: text/plain; name=\"a\"\r\n\
                   Content-Disposition: attachment; filename=\"bb\"; filename=\"ccc\"\r\n\
                   Content-Disposition: inline; filename=dddd\r\n\
                   Content-Type: application/x-evil\r\n\r\nbody";
        assert_eq!(
            judged(msg),
            [
                "MimeFilenameLength { len: 1 }",
                "MimeFilenameLength { len: 2 }",
                "MimeFilenameLength { len: 3 }",
                "MimeFilenameLength { len: 4 }",
            ]
        );
        let types: Vec<String> = feed(msg)
            .into_iter()
            .filter(|l| l.starts_with("type"))
            .collect();
        assert_eq!(types, ["type text/plain", "type application/x-evil"]);
    }

    #[test]
    fn rfc2231_continuations_are_measured_as_their_joined_length() {
        let msg = "Content-Disposition: attachment;\r\n filename*0*=utf-8''%E2%82%AC;\r\n \
                   filename*1=abc; filename*2=\"de\"\r\n\r\n";
        assert_eq!(judged(msg), ["MimeFilenameLength { len: 14 }"]);
        let long = format!(
            "Content-Disposition: attachment; filename*0=\"{a}\";\r\n filename*1=\"{a}\";\r\n filename*2=\"{a}\"\r\n\r\n",
            a = "x".repeat(100)
        );
        assert_eq!(judged(&long), ["MimeFilenameLength { len: 300 }"]);
    }

    #[test]
    fn a_long_parameter_before_the_filename_does_not_hide_it() {
        let pad = "p".repeat(1100);
        let name = "n".repeat(300);
        let one_line =
            format!("Content-Disposition: attachment; x=\"{pad}\"; filename=\"{name}\"\r\n\r\n");
        assert_eq!(judged(&one_line), ["MimeFilenameLength { len: 300 }"]);
        let folded = format!(
            "Content-Disposition: attachment;\r\n x=\"{pad}\";\r\n y=\"{pad}\";\r\n filename=\"{name}\"\r\n\r\n"
        );
        assert_eq!(judged(&folded), ["MimeFilenameLength { len: 300 }"]);
        // Quoted `;` and `=` do not end a value; comments are skipped.
        let tricky = "Content-Disposition: attachment (a; filename=x); x=\"a;filename=b\"; \
                      filename=\"a\\\"b\"\r\n\r\n";
        assert_eq!(judged(tricky), ["MimeFilenameLength { len: 3 }"]);
    }

    #[test]
    fn boundaries_longer_than_70_characters_are_followed() {
        let boundary = "b".repeat(71);
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n\
             Content-Disposition: attachment; filename=\"{}\"\r\n\r\nx\r\n--{boundary}--\r\n",
            "n".repeat(300)
        );
        assert_eq!(judged(&msg), ["MimeFilenameLength { len: 300 }"]);
        // Past the cap the parts cannot be followed, and that is said.
        let huge = "b".repeat(BOUNDARY_CAP + 1);
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"{huge}\"\r\n\r\n--{huge}\r\n\
             Content-Disposition: attachment; filename=\"x\"\r\n\r\nx\r\n"
        );
        assert_eq!(judged(&msg), ["MimeParseLimit { limit: BoundaryLength }"]);
    }

    #[test]
    fn nesting_past_the_depth_limit_is_a_parse_limit() {
        let mut msg = String::new();
        for level in 0..=MAX_DEPTH {
            msg +=
                &format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n");
        }
        msg += "Content-Disposition: attachment; filename=\"deep\"\r\n\r\nx\r\n";
        assert_eq!(judged(&msg), ["MimeParseLimit { limit: Depth }"]);
        // At the limit itself, the innermost part is still judged.
        let mut msg = String::new();
        for level in 0..MAX_DEPTH {
            msg +=
                &format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n");
        }
        msg += "Content-Disposition: attachment; filename=\"deep\"\r\n\r\nx\r\n";
        assert_eq!(judged(&msg), ["MimeFilenameLength { len: 4 }"]);
    }

    #[test]
    fn a_second_multipart_boundary_in_one_header_is_a_parse_limit() {
        let msg = "Content-Type: multipart/mixed; boundary=a\r\n\
                   Content-Type: multipart/mixed; boundary=b\r\n\r\nx\r\n";
        assert_eq!(
            judged(msg),
            ["MimeParseLimit { limit: ConflictingBoundaries }"]
        );
    }

    #[test]
    fn message_without_body_reports_header_end() {
        let log = feed("Subject: x");
        assert_eq!(log[1], "HeaderEnd { len: 12, to_recipients: 0 }");
    }
}
