//! SMTP command verbs and EHLO keywords as small tokens and bit sets, so the hot path
//! dispatches on an integer and keyword masking is one AND (as in smtp-proto).

/// Case-insensitive token of up to 8 ASCII bytes packed into a `u64`.
#[inline]
pub const fn token64(word: &[u8]) -> u64 {
    let mut t = 0u64;
    let mut i = 0;
    while i < word.len() && i < 8 {
        t |= (word[i].to_ascii_uppercase() as u64) << (8 * i);
        i += 1;
    }
    t
}

/// Commands the inspector knows. `Other` is anything else (including private verbs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Auth,
    Etrn,
    Help,
    Saml,
    Send,
    Soml,
    Vrfy,
    Expn,
    Turn,
    Starttls,
    Bdat,
    Other,
}

impl Verb {
    pub const ALL: [Verb; 19] = [
        Verb::Helo,
        Verb::Ehlo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Rset,
        Verb::Noop,
        Verb::Quit,
        Verb::Auth,
        Verb::Etrn,
        Verb::Help,
        Verb::Saml,
        Verb::Send,
        Verb::Soml,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Turn,
        Verb::Starttls,
        Verb::Bdat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Auth => "AUTH",
            Verb::Etrn => "ETRN",
            Verb::Help => "HELP",
            Verb::Saml => "SAML",
            Verb::Send => "SEND",
            Verb::Soml => "SOML",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Turn => "TURN",
            Verb::Starttls => "STARTTLS",
            Verb::Bdat => "BDAT",
            Verb::Other => "",
        }
    }

    /// The verb of a command word (the bytes before the first space), any case.
    #[inline]
    pub fn parse(word: &[u8]) -> Verb {
        if word.len() > 8 {
            return Verb::Other;
        }
        const fn t(s: &str) -> u64 {
            token64(s.as_bytes())
        }
        match token64(word) {
            x if x == t("HELO") => Verb::Helo,
            x if x == t("EHLO") => Verb::Ehlo,
            x if x == t("MAIL") => Verb::Mail,
            x if x == t("RCPT") => Verb::Rcpt,
            x if x == t("DATA") => Verb::Data,
            x if x == t("RSET") => Verb::Rset,
            x if x == t("NOOP") => Verb::Noop,
            x if x == t("QUIT") => Verb::Quit,
            x if x == t("AUTH") => Verb::Auth,
            x if x == t("ETRN") => Verb::Etrn,
            x if x == t("HELP") => Verb::Help,
            x if x == t("SAML") => Verb::Saml,
            x if x == t("SEND") => Verb::Send,
            x if x == t("SOML") => Verb::Soml,
            x if x == t("VRFY") => Verb::Vrfy,
            x if x == t("EXPN") => Verb::Expn,
            x if x == t("TURN") => Verb::Turn,
            x if x == t("STARTTLS") => Verb::Starttls,
            x if x == t("BDAT") => Verb::Bdat,
            _ => Verb::Other,
        }
    }

    #[inline]
    pub const fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// A set of verbs, plus private verbs named by string (e.g. `X-LINK2STATE`, `XEXCH50`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSet {
    pub known: u32,
    /// Upper-cased private verbs; compared only when the verb is `Verb::Other`.
    pub private: Vec<Box<[u8]>>,
}

impl CommandSet {
    pub fn of(verbs: &[Verb]) -> CommandSet {
        CommandSet {
            known: verbs.iter().fold(0, |acc, v| acc | v.bit()),
            private: Vec::new(),
        }
    }

    /// Adds a verb by name; unknown names become private verbs.
    pub fn insert_name(&mut self, name: &str) {
        match Verb::parse(name.as_bytes()) {
            Verb::Other => {
                let upper: Box<[u8]> = name.to_ascii_uppercase().into_bytes().into();
                if !self.private.contains(&upper) {
                    self.private.push(upper);
                }
            }
            v => self.known |= v.bit(),
        }
    }

    #[inline]
    pub fn contains(&self, verb: Verb, word: &[u8]) -> bool {
        match verb {
            Verb::Other => self.private.iter().any(|p| p.eq_ignore_ascii_case(word)),
            v => self.known & v.bit() != 0,
        }
    }
}

/// EHLO reply keywords the policy language names (`ehlo-reply-parameter ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EhloKeyword {
    Starttls,
    Pipelining,
    Chunking,
    EightBitMime,
    BinaryMime,
    Size,
    Smtputf8,
    EnhancedStatusCodes,
    Dsn,
    Auth,
    Etrn,
    Vrfy,
    Checkpoint,
    Help,
    /// Anything not listed above (the firewall's `others`).
    Others,
}

impl EhloKeyword {
    pub const ALL: [EhloKeyword; 15] = [
        EhloKeyword::Starttls,
        EhloKeyword::Pipelining,
        EhloKeyword::Chunking,
        EhloKeyword::EightBitMime,
        EhloKeyword::BinaryMime,
        EhloKeyword::Size,
        EhloKeyword::Smtputf8,
        EhloKeyword::EnhancedStatusCodes,
        EhloKeyword::Dsn,
        EhloKeyword::Auth,
        EhloKeyword::Etrn,
        EhloKeyword::Vrfy,
        EhloKeyword::Checkpoint,
        EhloKeyword::Help,
        EhloKeyword::Others,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EhloKeyword::Starttls => "STARTTLS",
            EhloKeyword::Pipelining => "PIPELINING",
            EhloKeyword::Chunking => "CHUNKING",
            EhloKeyword::EightBitMime => "8BITMIME",
            EhloKeyword::BinaryMime => "BINARYMIME",
            EhloKeyword::Size => "SIZE",
            EhloKeyword::Smtputf8 => "SMTPUTF8",
            EhloKeyword::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            EhloKeyword::Dsn => "DSN",
            EhloKeyword::Auth => "AUTH",
            EhloKeyword::Etrn => "ETRN",
            EhloKeyword::Vrfy => "VRFY",
            EhloKeyword::Checkpoint => "CHECKPOINT",
            EhloKeyword::Help => "HELP",
            EhloKeyword::Others => "OTHERS",
        }
    }

    /// The keyword of an EHLO reply line's text (the bytes before the first space), any case.
    pub fn parse(word: &[u8]) -> EhloKeyword {
        Self::ALL[..Self::ALL.len() - 1]
            .iter()
            .copied()
            .find(|k| k.name().as_bytes().eq_ignore_ascii_case(word))
            // The firewall's `ecode` is ENHANCEDSTATUSCODES.
            .or_else(|| {
                b"ECODE"
                    .eq_ignore_ascii_case(word)
                    .then_some(EhloKeyword::EnhancedStatusCodes)
            })
            .unwrap_or(EhloKeyword::Others)
    }

    #[inline]
    pub const fn bit(self) -> EhloSet {
        1 << (self as u8)
    }
}

/// A set of EHLO keywords as bits.
pub type EhloSet = u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_parse_case_insensitively() {
        assert_eq!(Verb::parse(b"ehlo"), Verb::Ehlo);
        assert_eq!(Verb::parse(b"StartTLS"), Verb::Starttls);
        assert_eq!(Verb::parse(b"MAILX"), Verb::Other);
        assert_eq!(Verb::parse(b"X-LINK2STATE"), Verb::Other);
        for v in Verb::ALL {
            assert_eq!(Verb::parse(v.name().as_bytes()), v);
        }
    }

    #[test]
    fn private_verbs_match_by_name() {
        let mut set = CommandSet::of(&[Verb::Helo]);
        set.insert_name("x-link2state");
        assert!(set.contains(Verb::Other, b"X-LINK2STATE"));
        assert!(!set.contains(Verb::Other, b"XEXCH50"));
        assert!(set.contains(Verb::Helo, b"helo"));
        assert!(!set.contains(Verb::Mail, b"MAIL"));
    }

    #[test]
    fn ehlo_keywords_parse() {
        assert_eq!(EhloKeyword::parse(b"pipelining"), EhloKeyword::Pipelining);
        assert_eq!(
            EhloKeyword::parse(b"ECODE"),
            EhloKeyword::EnhancedStatusCodes
        );
        assert_eq!(EhloKeyword::parse(b"X-EXPS"), EhloKeyword::Others);
    }
}
