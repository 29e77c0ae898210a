//! The argument of `MAIL FROM:` and `RCPT TO:` parsed as an RFC 5321 §4.1.2 path,
//! and the canonical address the sender and recipient rules compare.
//!
//! Grammar (RFC 5321 §4.1.2, with RFC 6531's UTF-8 in atoms, quoted strings and
//! domain labels so SMTPUTF8 mail parses):
//!
//! ```text
//! argument     = KEYWORD *SP ( path | mailbox ) [ 1*SP param *( 1*SP param ) ] *SP
//! path         = "<>" | "<" [ at-domain *( "," at-domain ) ":" ] mailbox ">"
//! mailbox      = local-part [ "@" ( domain [ "." ] | "[" 1*dcontent "]" ) ]
//! local-part   = atom *( "." atom ) | DQUOTE *( qtext | "\" %d32-126 ) DQUOTE
//! domain       = label *( "." label )   ; label: letters, digits, inner hyphens
//! param        = ( ALPHA | DIGIT ) *( ALPHA | DIGIT | "-" ) [ "=" 1*( %d33-60 | %d62-126 ) ]
//! ```
//!
//! Leniencies, each one real servers (Postfix, Exim) accept: spaces after the colon,
//! a mailbox without angle brackets (ended by a space), a mailbox without a domain
//! (`<postmaster>`, or a local user the server completes with its own domain), one
//! trailing dot on the domain. The source route is parsed and then ignored, as RFC
//! 5321 §4.1.1.3 tells servers to.
//!
//! [`parse`] borrows the command line and returns slices; [`Address`] is the canonical
//! form in a fixed-size buffer. Nothing here allocates.

/// Room for a canonical address. RFC 5321 §4.5.3.1.3 caps a path at 256 octets, and
/// the canonical form is never longer than the path as written; twice that leaves room
/// for servers that accept more. A longer address does not fit and its command is
/// treated as unparseable (masked, so the server answers it 5xx); the length rules
/// (`sender-address length`, `cmd line length`) see the raw length before that.
pub const ADDRESS_CAP: usize = 512;

/// A parsed `FROM:<...> params` / `TO:<...> params`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathArgument<'a> {
    /// The path as written, angle brackets excluded (source route included; empty for
    /// `<>`).
    pub raw: &'a [u8],
    /// The mailbox's local part as written (quotes and quoted pairs kept); empty for `<>`.
    pub local: &'a [u8],
    /// The domain or address literal as written (a trailing dot kept); `None` for `<>`
    /// and for a mailbox without a domain.
    pub domain: Option<&'a [u8]>,
    /// ESMTP parameters after the path, leading and trailing spaces excluded.
    pub params: &'a [u8],
}

impl PathArgument<'_> {
    /// The null reverse-path `<>` (RFC 5321 §4.5.5).
    pub fn is_null(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Where an argument stopped being a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not `FROM:` / `TO:` (any case).
    Keyword,
    /// Nothing, or `<>` where a forward-path is required.
    Empty,
    /// A source route that is not `@domain,@domain:`.
    Route,
    LocalPart,
    Domain,
    /// A path without its closing `>`.
    Unclosed,
    /// Text after the path that is not ESMTP parameters.
    Parameters,
}

/// Whether `<>` is acceptable: a reverse-path (MAIL) may be null, a forward-path
/// (RCPT) may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Reverse,
    Forward,
}

/// Parses `args` (what follows the verb, e.g. ` FROM:<a@b> SIZE=10`) with `keyword`
/// (`FROM:` or `TO:`).
pub fn parse<'a>(
    args: &'a [u8],
    keyword: &[u8],
    kind: PathKind,
) -> Result<PathArgument<'a>, Malformed> {
    let args = skip_spaces(args);
    if args.len() < keyword.len() || !args[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return Err(Malformed::Keyword);
    }
    let rest = skip_spaces(&args[keyword.len()..]);
    let (path, after) = match rest.first() {
        Some(b'<') => bracketed(rest, kind)?,
        Some(_) => {
            let m = mailbox(rest)?;
            (m, m.end)
        }
        None => return Err(Malformed::Empty),
    };
    let tail = &rest[after..];
    if !tail.is_empty() && tail[0] != b' ' {
        return Err(Malformed::Parameters);
    }
    let params = trim_spaces(tail);
    if !params_valid(params) {
        return Err(Malformed::Parameters);
    }
    Ok(PathArgument {
        raw: path.raw(rest),
        local: &rest[path.local.0..path.local.1],
        domain: path.domain.map(|(s, e)| &rest[s..e]),
        params,
    })
}

/// Offsets into the text after the keyword.
#[derive(Clone, Copy)]
struct Span {
    raw: (usize, usize),
    local: (usize, usize),
    domain: Option<(usize, usize)>,
    /// Just past the path (past `>` when bracketed).
    end: usize,
}

impl Span {
    fn raw<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.raw.0..self.raw.1]
    }
}

/// `<...>` starting at `text[0]`.
fn bracketed(text: &[u8], kind: PathKind) -> Result<(Span, usize), Malformed> {
    if text.get(1) == Some(&b'>') {
        return match kind {
            PathKind::Reverse => Ok((
                Span {
                    raw: (1, 1),
                    local: (1, 1),
                    domain: None,
                    end: 2,
                },
                2,
            )),
            PathKind::Forward => Err(Malformed::Empty),
        };
    }
    let mut pos = 1;
    if text.get(pos) == Some(&b'@') {
        // A-d-l = At-domain *( "," At-domain ) ":"
        loop {
            if text.get(pos) != Some(&b'@') {
                return Err(Malformed::Route);
            }
            pos = domain_end(text, pos + 1).ok_or(Malformed::Route)?;
            match text.get(pos) {
                Some(b',') => pos += 1,
                Some(b':') => {
                    pos += 1;
                    break;
                }
                _ => return Err(Malformed::Route),
            }
        }
    }
    let m = mailbox(&text[pos..])?;
    let shift = |(s, e): (usize, usize)| (s + pos, e + pos);
    let end = pos + m.end;
    if text.get(end) != Some(&b'>') {
        return Err(Malformed::Unclosed);
    }
    Ok((
        Span {
            raw: (1, end),
            local: shift(m.local),
            domain: m.domain.map(shift),
            end: end + 1,
        },
        end + 1,
    ))
}

/// `local-part [ "@" domain ]` at `text[0]`; ends before the first byte that cannot
/// continue it.
fn mailbox(text: &[u8]) -> Result<Span, Malformed> {
    let local_end = local_part_end(text).ok_or(Malformed::LocalPart)?;
    if text.get(local_end) != Some(&b'@') {
        return Ok(Span {
            raw: (0, local_end),
            local: (0, local_end),
            domain: None,
            end: local_end,
        });
    }
    let start = local_end + 1;
    let end = if text.get(start) == Some(&b'[') {
        literal_end(text, start).ok_or(Malformed::Domain)?
    } else {
        let end = domain_end(text, start).ok_or(Malformed::Domain)?;
        // One trailing dot: a fully qualified name as some clients write it.
        if text.get(end) == Some(&b'.') {
            end + 1
        } else {
            end
        }
    };
    Ok(Span {
        raw: (0, end),
        local: (0, local_end),
        domain: Some((start, end)),
        end,
    })
}

/// End of a Dot-string or Quoted-string local part at `text[0]`.
fn local_part_end(text: &[u8]) -> Option<usize> {
    if text.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match *text.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => {
                    let c = *text.get(i + 1)?;
                    if !(32..=126).contains(&c) {
                        return None;
                    }
                    i += 2;
                }
                c if is_qtext(c) => i += 1,
                _ => return None,
            }
        }
    }
    dot_string_end(text)
}

/// End of `atom *("." atom)` at `text[0]`; `None` when it does not start with an atom
/// or a dot is not followed by one.
fn dot_string_end(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let start = i;
        while text.get(i).is_some_and(|&c| is_atext(c)) {
            i += 1;
        }
        if i == start {
            return None;
        }
        if text.get(i) == Some(&b'.') && text.get(i + 1).is_some_and(|&c| is_atext(c)) {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// End of `label *("." label)` starting at `text[start]` (a trailing dot not included).
fn domain_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        let label = i;
        while text.get(i).is_some_and(|&c| is_let_dig(c) || c == b'-') {
            i += 1;
        }
        // Let-dig [Ldh-str]: no hyphen first or last.
        if i == label || text[label] == b'-' || text[i - 1] == b'-' {
            return None;
        }
        if text.get(i) == Some(&b'.') && text.get(i + 1).is_some_and(|&c| is_let_dig(c)) {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// End (past `]`) of an address literal starting at `text[start] == '['`.
fn literal_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while text.get(i).is_some_and(|&c| is_dcontent(c)) {
        i += 1;
    }
    (i > start + 1 && text.get(i) == Some(&b']')).then_some(i + 1)
}

/// `esmtp-param *(SP esmtp-param)`, several spaces tolerated between them.
fn params_valid(params: &[u8]) -> bool {
    params
        .split(|&b| b == b' ')
        .filter(|p| !p.is_empty())
        .all(|param| {
            let (keyword, value) = match memchr::memchr(b'=', param) {
                Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
                None => (param, None),
            };
            let keyword_ok = keyword.first().is_some_and(u8::is_ascii_alphanumeric)
                && keyword
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-');
            let value_ok = value.is_none_or(|v| {
                !v.is_empty()
                    && v.iter()
                        .all(|&c| matches!(c, 33..=60 | 62..=126) || c >= 0x80)
            });
            keyword_ok && value_ok
        })
}

/// RFC 5322 atext, plus RFC 6531's UTF-8 octets.
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

/// RFC 5321 qtextSMTP (printable ASCII but `"` and `\`), plus UTF-8 octets.
fn is_qtext(c: u8) -> bool {
    matches!(c, 32..=33 | 35..=91 | 93..=126) || c >= 0x80
}

/// A domain label's letters and digits, plus UTF-8 octets (U-labels).
fn is_let_dig(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

/// RFC 5321 dcontent: printable ASCII but `[`, `\` and `]`.
fn is_dcontent(c: u8) -> bool {
    matches!(c, 33..=90 | 94..=126)
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    &s[n..]
}

/// Spaces (only SP: a tab is no separator of ESMTP parameters) around the parameters.
fn trim_spaces(s: &[u8]) -> &[u8] {
    let start = s.iter().take_while(|&&c| c == b' ').count();
    let s = &s[start..];
    let n = s.iter().rev().take_while(|&&c| c == b' ').count();
    &s[..s.len() - n]
}

/// The address the rules compare: `local@domain` with the source route dropped, a
/// quoted local part written as a dot-string when it is one (RFC 5321 §4.1.2: they are
/// the same mailbox) and otherwise quoted with only `"` and `\` escaped, the domain
/// lower-cased and without its trailing dot. `<>` is the empty address.
#[derive(Clone, Copy)]
pub struct Address {
    bytes: [u8; ADDRESS_CAP],
    len: u16,
    /// Offset of the `@`, when there is a domain.
    at: Option<u16>,
}

impl Address {
    /// The canonical form of `path`, or `None` when it does not fit [`ADDRESS_CAP`].
    pub fn of(path: &PathArgument<'_>) -> Option<Address> {
        let mut a = Address {
            bytes: [0; ADDRESS_CAP],
            len: 0,
            at: None,
        };
        a.push_local(path.local)?;
        if let Some(domain) = path.domain {
            a.at = Some(a.len);
            a.push(b'@')?;
            let domain = domain.strip_suffix(b".").unwrap_or(domain);
            for &c in domain {
                a.push(c.to_ascii_lowercase())?;
            }
        }
        Some(a)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The canonical domain (lower-cased, no trailing dot).
    pub fn domain(&self) -> Option<&[u8]> {
        self.at.map(|at| &self.as_bytes()[at as usize + 1..])
    }

    /// The canonical local part.
    pub fn local(&self) -> &[u8] {
        &self.as_bytes()[..self.at.map_or(self.len, |at| at) as usize]
    }

    fn push(&mut self, c: u8) -> Option<()> {
        *self.bytes.get_mut(self.len as usize)? = c;
        self.len += 1;
        Some(())
    }

    fn push_local(&mut self, local: &[u8]) -> Option<()> {
        let Some(inner) = local
            .strip_prefix(b"\"")
            .and_then(|l| l.strip_suffix(b"\""))
        else {
            return local.iter().try_for_each(|&c| self.push(c));
        };
        let content = || Unquoted { rest: inner };
        if is_dot_string(content()) {
            return content().try_for_each(|c| self.push(c));
        }
        self.push(b'"')?;
        for c in content() {
            if c == b'"' || c == b'\\' {
                self.push(b'\\')?;
            }
            self.push(c)?;
        }
        self.push(b'"')
    }
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Address({})", self.as_bytes().escape_ascii())
    }
}

/// The characters of a quoted string's content, quoted pairs undone.
struct Unquoted<'a> {
    rest: &'a [u8],
}

impl Iterator for Unquoted<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&c, rest) = self.rest.split_first()?;
        if c == b'\\' {
            let (&q, rest) = rest.split_first()?;
            self.rest = rest;
            return Some(q);
        }
        self.rest = rest;
        Some(c)
    }
}

/// Whether a sequence of characters is a Dot-string (`atom *("." atom)`).
fn is_dot_string(chars: impl Iterator<Item = u8>) -> bool {
    let mut atom_len = 0usize;
    for c in chars {
        if c == b'.' {
            if atom_len == 0 {
                return false;
            }
            atom_len = 0;
        } else if is_atext(c) {
            atom_len += 1;
        } else {
            return false;
        }
    }
    atom_len > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(args: &[u8]) -> Result<PathArgument<'_>, Malformed> {
        parse(args, b"FROM:", PathKind::Reverse)
    }

    fn to(args: &[u8]) -> Result<PathArgument<'_>, Malformed> {
        parse(args, b"TO:", PathKind::Forward)
    }

    fn canonical(args: &[u8]) -> String {
        let p = from(args).unwrap();
        String::from_utf8_lossy(Address::of(&p).unwrap().as_bytes()).into_owned()
    }

    #[test]
    fn plain_path_with_parameters() {
        let p = from(b" FROM:<a.b+c@Example.ORG> SIZE=100 BODY=8BITMIME").unwrap();
        assert_eq!(p.raw, b"a.b+c@Example.ORG");
        assert_eq!(p.local, b"a.b+c");
        assert_eq!(p.domain, Some(&b"Example.ORG"[..]));
        assert_eq!(p.params, b"SIZE=100 BODY=8BITMIME");
        assert_eq!(canonical(b" FROM:<a.b+c@Example.ORG>"), "a.b+c@example.org");
    }

    #[test]
    fn null_reverse_path_but_not_a_null_forward_path() {
        let p = from(b" FROM:<> BODY=7BIT").unwrap();
        assert!(p.is_null());
        assert_eq!(Address::of(&p).unwrap().as_bytes(), b"");
        assert_eq!(to(b" TO:<>"), Err(Malformed::Empty));
    }

    #[test]
    fn source_route_is_parsed_and_dropped() {
        let p = to(b" TO:<@a.example,@b.example:u@d.example>").unwrap();
        assert_eq!(p.raw, b"@a.example,@b.example:u@d.example");
        assert_eq!(p.local, b"u");
        assert_eq!(p.domain, Some(&b"d.example"[..]));
        assert_eq!(to(b" TO:<@a.example u@d>"), Err(Malformed::Route));
        assert_eq!(to(b" TO:<@:u@d>"), Err(Malformed::Route));
    }

    #[test]
    fn quoted_local_part_may_hold_the_closing_bracket() {
        let p = from(b" FROM:<\"a>b\"@spam.example>").unwrap();
        assert_eq!(p.local, b"\"a>b\"");
        assert_eq!(p.domain, Some(&b"spam.example"[..]));
        assert_eq!(
            canonical(b" FROM:<\"a>b\"@spam.example>"),
            "\"a>b\"@spam.example"
        );
    }

    #[test]
    fn quoted_pairs_are_undone_and_a_dot_string_loses_its_quotes() {
        assert_eq!(canonical(b" FROM:<\"b\\oss\"@x>"), "boss@x");
        assert_eq!(canonical(b" FROM:<\"a\\\"b\"@x>"), "\"a\\\"b\"@x");
        assert_eq!(canonical(b" FROM:<\"a b\"@x>"), "\"a b\"@x");
        assert_eq!(canonical(b" FROM:<\"a..b\"@x>"), "\"a..b\"@x");
        assert_eq!(from(b" FROM:<\"a\x01\"@x>"), Err(Malformed::LocalPart));
        assert_eq!(from(b" FROM:<\"abc@x>"), Err(Malformed::LocalPart));
    }

    #[test]
    fn domain_is_lower_cased_and_loses_one_trailing_dot() {
        assert_eq!(canonical(b" FROM:<x@SPAM.Example.>"), "x@spam.example");
        assert_eq!(from(b" FROM:<x@spam.example..>"), Err(Malformed::Unclosed));
        assert_eq!(from(b" FROM:<x@-bad.example>"), Err(Malformed::Domain));
        assert_eq!(from(b" FROM:<x@bad-.example>"), Err(Malformed::Domain));
        assert_eq!(from(b" FROM:<x@>"), Err(Malformed::Domain));
    }

    #[test]
    fn address_literals() {
        assert_eq!(canonical(b" FROM:<x@[192.0.2.1]>"), "x@[192.0.2.1]");
        assert_eq!(
            canonical(b" FROM:<x@[IPv6:2001:DB8::1]>"),
            "x@[ipv6:2001:db8::1]"
        );
        assert_eq!(from(b" FROM:<x@[]>"), Err(Malformed::Domain));
        assert_eq!(from(b" FROM:<x@[a]b]>"), Err(Malformed::Unclosed));
    }

    #[test]
    fn dot_strings_need_atoms_between_dots() {
        assert!(from(b" FROM:<a.b.c@x>").is_ok());
        assert_eq!(from(b" FROM:<.a@x>"), Err(Malformed::LocalPart));
        assert_eq!(from(b" FROM:<a.@x>"), Err(Malformed::Unclosed));
        assert_eq!(from(b" FROM:<a..b@x>"), Err(Malformed::Unclosed));
    }

    #[test]
    fn lenient_forms_real_servers_accept() {
        let p = from(b"  from:   <a@b>  ").unwrap();
        assert_eq!(p.raw, b"a@b");
        let p = from(b" FROM:a@b SIZE=1").unwrap();
        assert_eq!((p.raw, p.params), (&b"a@b"[..], &b"SIZE=1"[..]));
        let p = to(b" TO:<Postmaster>").unwrap();
        assert_eq!((p.local, p.domain), (&b"Postmaster"[..], None));
        let utf8 = "TO:<j\u{f6}rg@b\u{fc}cher.example> ".as_bytes();
        assert!(parse(utf8, b"TO:", PathKind::Forward).is_ok());
    }

    #[test]
    fn anything_else_is_malformed() {
        assert_eq!(from(b" TO:<a@b>"), Err(Malformed::Keyword));
        assert_eq!(from(b" FROM:"), Err(Malformed::Empty));
        assert_eq!(from(b" FROM:<a@b"), Err(Malformed::Unclosed));
        assert_eq!(from(b" FROM:<a@b>x"), Err(Malformed::Parameters));
        assert_eq!(from(b" FROM:<a@b> SIZE="), Err(Malformed::Parameters));
        assert_eq!(from(b" FROM:<a@b> -X"), Err(Malformed::Parameters));
        assert_eq!(from(b" FROM:<a@b> X=\x00"), Err(Malformed::Parameters));
        assert_eq!(from(b" FROM:<a b@c>"), Err(Malformed::Unclosed));
        assert_eq!(from(b" FROM:<a\x00@c>"), Err(Malformed::Unclosed));
    }

    #[test]
    fn pipe_and_backquote_are_atext_so_the_rules_must_see_them() {
        let p = to(b" TO:<a|b@example.net>").unwrap();
        assert_eq!(p.local, b"a|b");
        assert!(from(b" FROM:<a`id`@x>").is_ok());
    }

    #[test]
    fn a_canonical_address_longer_than_the_cap_does_not_fit() {
        let fits = format!(" FROM:<{}@x>", "a".repeat(ADDRESS_CAP - 2));
        let p = from(fits.as_bytes()).unwrap();
        assert_eq!(Address::of(&p).unwrap().as_bytes().len(), ADDRESS_CAP);
        let over = format!(" FROM:<{}@x>", "a".repeat(ADDRESS_CAP - 1));
        let p = from(over.as_bytes()).unwrap();
        assert!(Address::of(&p).is_none());
    }
}
