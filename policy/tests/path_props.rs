//! The RFC 5321 path parser against the grammar it implements.
//!
//! 1. Paths generated from the grammar parse, to the local part and domain they were
//!    built from.
//! 2. Mutations of them (and arbitrary bytes) never panic, and the parser accepts
//!    exactly what a reference implementation — the grammar written as one anchored
//!    regular expression — accepts, with the same local part and domain.

use proptest::prelude::*;
use regex::bytes::Regex;
use std::sync::OnceLock;

use smtpgate_policy::path::{self, Address, PathKind, ADDRESS_CAP};

// The grammar's pieces, as regular-expression text (bytes, not Unicode).
const ATEXT: &str = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]";
const QTEXT: &str = r"[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]";
const LET_DIG: &str = r"[A-Za-z0-9\x80-\xff]";
const DCONTENT: &str = r"[\x21-\x5a\x5e-\x7e]";
const PARAM: &str = r"[A-Za-z0-9][A-Za-z0-9\-]*(?:=[\x21-\x3c\x3e-\x7e\x80-\xff]+)?";

fn dot_string() -> String {
    format!("{ATEXT}+(?:\\.{ATEXT}+)*")
}

fn quoted_string() -> String {
    format!(r#""(?:{QTEXT}|\\[\x20-\x7e])*""#)
}

fn label() -> String {
    format!("{LET_DIG}(?:[A-Za-z0-9\\x80-\\xff\\-]*{LET_DIG})?")
}

fn domain() -> String {
    format!("{l}(?:\\.{l})*", l = label())
}

fn literal() -> String {
    format!(r"\[{DCONTENT}+\]")
}

/// The reference: the whole argument as one anchored expression. Capture groups:
/// local part and domain of the bracketed form (1, 2), of the bare form (3, 4), and
/// the parameters (5).
fn reference(keyword: &str, kind: PathKind) -> Regex {
    let local = format!("(?:{}|{})", dot_string(), quoted_string());
    let dom = format!("(?:{}\\.?|{})", domain(), literal());
    let route = format!("(?:@{d}(?:,@{d})*:)?", d = domain());
    let null = if kind == PathKind::Reverse { "<>|" } else { "" };
    let text = format!(
        "(?s-u)^[ \\t]*(?i:{keyword})[ \\t]*(?:{null}<{route}({local})(?:@({dom}))?>|({local})(?:@({dom}))?)((?: +{PARAM})*) *$"
    );
    Regex::new(&text).unwrap()
}

/// What the reference says: `None` for not a path, else local part and domain.
fn expected<'a>(re: &Regex, args: &'a [u8]) -> Option<(&'a [u8], Option<&'a [u8]>)> {
    let c = re.captures(args)?;
    let local = c.get(1).or(c.get(3)).map_or(&b""[..], |m| m.as_bytes());
    let domain = c.get(2).or(c.get(4)).map(|m| m.as_bytes());
    Some((local, domain))
}

fn bytes(pattern: &str) -> BoxedStrategy<Vec<u8>> {
    proptest::string::bytes_regex(&format!("(?s-u:{pattern})"))
        .unwrap()
        .boxed()
}

/// A valid argument built from the grammar, with the local part and domain it holds.
#[derive(Clone, Debug)]
struct Built {
    args: Vec<u8>,
    local: Vec<u8>,
    domain: Option<Vec<u8>>,
}

fn built() -> impl Strategy<Value = Built> {
    let local = prop_oneof![bytes(&dot_string()), bytes(&quoted_string())];
    let dom = prop_oneof![
        3 => bytes(&format!("{}\\.?", domain())),
        1 => bytes(&literal()),
    ];
    (
        local,
        proptest::option::weighted(0.9, dom),
        proptest::collection::vec(bytes(&domain()), 0..3),
        any::<bool>(),
        proptest::collection::vec(bytes(PARAM), 0..3),
        bytes("[ ]{0,2}(?i:from:)[ \\t]{0,2}"),
    )
        .prop_map(|(local, domain, route, bracketed, params, keyword)| {
            let mut args = keyword;
            // A bare mailbox cannot carry a source route.
            if bracketed {
                args.push(b'<');
                for (i, r) in route.iter().enumerate() {
                    args.push(if i == 0 { b'@' } else { b',' });
                    if i > 0 {
                        args.push(b'@');
                    }
                    args.extend_from_slice(r);
                }
                if !route.is_empty() {
                    args.push(b':');
                }
            }
            args.extend_from_slice(&local);
            if let Some(d) = &domain {
                args.push(b'@');
                args.extend_from_slice(d);
            }
            if bracketed {
                args.push(b'>');
            }
            for p in &params {
                args.push(b' ');
                args.extend_from_slice(p);
            }
            Built {
                args,
                local,
                domain,
            }
        })
}

/// Edits that keep most of the structure: replace, insert or delete bytes from an
/// alphabet rich in the grammar's delimiters.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let delimiter = prop_oneof![
        Just(b'<'),
        Just(b'>'),
        Just(b'@'),
        Just(b'"'),
        Just(b'\\'),
        Just(b'.'),
        Just(b','),
        Just(b':'),
        Just(b' '),
        Just(b'['),
        Just(b']'),
        Just(b'='),
        Just(b'-'),
        Just(b'|'),
        Just(0u8),
        Just(b'\t'),
        Just(0xc3u8),
        any::<u8>(),
    ];
    let edit = (any::<prop::sample::Index>(), 0u8..3, delimiter);
    (built(), proptest::collection::vec(edit, 1..4)).prop_map(|(b, edits)| {
        let mut args = b.args;
        for (at, op, byte) in edits {
            let i = at.index(args.len() + 1);
            match op {
                0 if i < args.len() => args[i] = byte,
                1 if i < args.len() => {
                    args.remove(i);
                }
                _ => args.insert(i, byte),
            }
        }
        args
    })
}

fn check_against_reference(args: &[u8]) -> Result<(), TestCaseError> {
    static REFERENCES: OnceLock<[Regex; 2]> = OnceLock::new();
    let references = REFERENCES.get_or_init(|| {
        [
            reference("FROM:", PathKind::Reverse),
            reference("TO:", PathKind::Forward),
        ]
    });
    let cases = [("FROM:", PathKind::Reverse), ("TO:", PathKind::Forward)];
    for ((keyword, kind), re) in cases.into_iter().zip(references) {
        let parsed = path::parse(args, keyword.as_bytes(), kind);
        let got = parsed.as_ref().ok().map(|p| (p.local, p.domain));
        prop_assert_eq!(
            got,
            expected(re, args),
            "{} on {}: {:?}",
            keyword,
            args.escape_ascii(),
            parsed
        );
        if let Ok(p) = parsed {
            // The canonical form is never longer than the path as written.
            if let Some(a) = Address::of(&p) {
                prop_assert!(a.as_bytes().len() <= p.raw.len());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn paths_built_from_the_grammar_parse_to_their_parts(b in built()) {
        let p = path::parse(&b.args, b"FROM:", PathKind::Reverse);
        let p = p.map_err(|e| TestCaseError::fail(format!("{e:?} on {}", b.args.escape_ascii())))?;
        prop_assert_eq!(p.local, &b.local[..]);
        prop_assert_eq!(p.domain, b.domain.as_deref());
        match Address::of(&p) {
            Some(address) => {
                if let Some(d) = &b.domain {
                    let d = d.strip_suffix(b".").unwrap_or(d);
                    prop_assert_eq!(address.domain(), Some(&d.to_ascii_lowercase()[..]));
                }
            }
            // It does not fit only when the path as written is longer than the room.
            None => prop_assert!(p.raw.len() > ADDRESS_CAP),
        }
        check_against_reference(&b.args)?;
    }

    #[test]
    fn mutated_paths_agree_with_the_reference_grammar(args in mutated()) {
        check_against_reference(&args)?;
    }

    #[test]
    fn arbitrary_bytes_agree_with_the_reference_grammar(
        args in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'<'), Just(b'>'), Just(b'@'), Just(b'"')],
            0..40,
        ).prop_map(|mut v| { v.splice(0..0, b" FROM:<".iter().copied()); v })
    ) {
        check_against_reference(&args)?;
    }
}
