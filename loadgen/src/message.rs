//! The message corpus: realistic messages built once at start-up, in their
//! DATA wire form (dot-stuffed, terminated) and raw form (for BDAT), with the
//! SHA-256 of their content as the sink computes it.
//!
//! Each message has RFC 5322 headers (Message-ID, Date, From, To, Subject),
//! a MIME multipart body with a text part (some lines start with '.', so
//! dot-stuffing is exercised) and a base64 attachment, lines of at most 76
//! characters. The content size equals the requested size exactly, except for
//! requests smaller than the fixed headers, which get the smallest message.

use crate::util::{SizeSpec, XorShift};
use sha2::{Digest, Sha256};

/// Distinct messages built per size class, so digests are not all identical.
const VARIANTS_PER_CLASS: usize = 4;

pub struct Message {
    /// Content as delivered: what the sink hashes.
    pub content: Vec<u8>,
    /// DATA wire form: content dot-stuffed, followed by ".\r\n".
    pub data_wire: Vec<u8>,
    /// Its MAIL command (with SIZE), built once rather than formatted per
    /// transaction.
    pub mail_command: Vec<u8>,
    pub digest: [u8; 32],
}

pub struct Corpus {
    pub messages: Vec<Message>,
    /// (cumulative weight, first message index) per size class.
    classes: Vec<(u64, usize)>,
    total_weight: u64,
}

impl Corpus {
    pub fn build(spec: &SizeSpec) -> Corpus {
        let mut messages = Vec::new();
        let mut classes = Vec::new();
        let mut total_weight = 0u64;
        for &(size, weight) in &spec.classes {
            total_weight += u64::from(weight);
            classes.push((total_weight, messages.len()));
            for _ in 0..VARIANTS_PER_CLASS {
                let seq = messages.len() as u64 + 1;
                messages.push(Message::new(build_content(size, seq)));
            }
        }
        Corpus {
            messages,
            classes,
            total_weight,
        }
    }

    /// Picks a message index following the size mix weights.
    pub fn pick(&self, rng: &mut XorShift) -> usize {
        let roll = rng.below(self.total_weight);
        let class = self
            .classes
            .iter()
            .find(|(cumulative, _)| roll < *cumulative)
            .unwrap_or(&self.classes[self.classes.len() - 1]);
        class.1 + rng.below(VARIANTS_PER_CLASS as u64) as usize
    }
}

impl Message {
    pub fn new(content: Vec<u8>) -> Message {
        let digest: [u8; 32] = Sha256::digest(&content).into();
        let data_wire = dot_stuff(&content);
        let mail_command = format!(
            "MAIL FROM:<loadgen@sender.example> SIZE={}\r\n",
            content.len()
        )
        .into_bytes();
        Message {
            content,
            data_wire,
            mail_command,
            digest,
        }
    }
}

/// RFC 5321 §4.5.2: a line starting with '.' gets one more '.'; then the
/// terminator. Content is expected to end with CRLF (ours always does).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    let mut line_start = true;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

const WORDS: &[&str] = &[
    "invoice",
    "shipment",
    "quarterly",
    "report",
    "meeting",
    "schedule",
    "attached",
    "please",
    "review",
    "the",
    "and",
    "for",
    "your",
    "account",
    "update",
    "delivery",
    "network",
    "capacity",
    "edge",
    "mail",
    "relay",
    "policy",
    "customer",
    "regards",
    "thanks",
    "tomorrow",
    "agenda",
    "budget",
    "draft",
    "final",
    "version",
    "notes",
    "summary",
    "action",
    "items",
    "team",
];

fn text_lines(rng: &mut XorShift, budget: usize) -> Vec<u8> {
    debug_assert!(budget != 1);
    let mut out = Vec::with_capacity(budget);
    let mut line_no = 0usize;
    while out.len() < budget {
        let remaining = budget - out.len();
        // A line is 2..=78 bytes with its CRLF; never leave a 1-byte tail.
        let mut len = remaining.min(78);
        if remaining - len == 1 {
            len -= 1;
        }
        let text_len = len - 2;
        let mut line = Vec::with_capacity(text_len);
        // Every 7th line starts with '.', as signatures and quoted text do.
        if line_no % 7 == 3 && text_len > 0 {
            line.push(b'.');
        }
        while line.len() < text_len {
            if !line.is_empty() && *line.last().unwrap() != b'.' {
                line.push(b' ');
            }
            let word = WORDS[rng.below(WORDS.len() as u64) as usize];
            line.extend_from_slice(word.as_bytes());
        }
        line.truncate(text_len);
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
        line_no += 1;
    }
    out
}

fn base64_lines(rng: &mut XorShift, raw_len: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw: Vec<u8> = (0..raw_len).map(|_| rng.next_u64() as u8).collect();
    let mut encoded = Vec::with_capacity(raw_len.div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        encoded.push(ALPHABET[(n >> 18) as usize & 63]);
        encoded.push(ALPHABET[(n >> 12) as usize & 63]);
        encoded.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        encoded.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 5322 date of "now" in UTC, e.g. "Tue, 24 Nov 2026 08:30:00 +0000".
fn rfc5322_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// Builds one message of exactly `size` content bytes (or the minimum).
pub fn build_content(size: usize, seq: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seq);
    let boundary = format!("----=_Part_{seq}_smtpgate_loadgen");
    let head = format!(
        "Message-ID: <{seq}.{size}.{}@loadgen.smtpgate.test>\r\n\
         Date: {}\r\n\
         From: \"smtpgate loadgen\" <loadgen@sender.example>\r\n\
         To: <sink@recipient.example>\r\n\
         Subject: smtpgate load test message {seq} ({size} bytes)\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a multi-part message in MIME format.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n",
        rng.next_u64() % 1_000_000,
        rfc5322_now()
    );
    let middle = format!(
        "--{boundary}\r\n\
         Content-Type: application/octet-stream; name=\"report-{seq}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"report-{seq}.bin\"\r\n\
         \r\n"
    );
    let tail = format!("--{boundary}--\r\n");
    let skeleton = head.len() + middle.len() + tail.len();
    let budget = size.saturating_sub(skeleton);

    // About 60% of the body goes to the attachment, the rest (exact) to text.
    let mut raw_len = (budget * 6 / 10) * 76 / 78 / 4 * 3;
    let (attachment, text_budget) = loop {
        let attachment = base64_lines(&mut rng.clone(), raw_len);
        match budget.checked_sub(attachment.len()) {
            Some(rest) if rest >= 2 || rest == 0 && budget == 0 => break (attachment, rest),
            _ if raw_len >= 3 => raw_len -= 3,
            _ => break (attachment, budget.max(2)),
        }
    };
    let text = text_lines(&mut rng, text_budget.max(2));

    let mut content = Vec::with_capacity(size.max(skeleton + 4));
    content.extend_from_slice(head.as_bytes());
    content.extend_from_slice(&text);
    content.extend_from_slice(middle.as_bytes());
    content.extend_from_slice(&attachment);
    content.extend_from_slice(tail.as_bytes());
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_and_line_lengths() {
        for size in [1024, 1500, 4096, 10 * 1024, 100 * 1024, 1_000_001] {
            let content = build_content(size, 3);
            assert_eq!(content.len(), size);
            assert!(content.ends_with(b"\r\n"));
            for line in content.split(|&b| b == b'\n') {
                assert!(line.len() <= 77, "line too long: {}", line.len());
            }
            // Every LF is part of a CRLF.
            let lfs = content.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(lfs, content.windows(2).filter(|w| w == b"\r\n").count());
        }
    }

    #[test]
    fn tiny_requests_get_the_minimal_message() {
        let content = build_content(10, 1);
        assert!(content.len() > 10 && content.ends_with(b"--\r\n"));
    }

    #[test]
    fn stuffing_adds_a_dot_to_dot_lines_and_terminates() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        let content = build_content(4096, 9);
        let dot_lines = content
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"."))
            .count();
        assert!(dot_lines > 0, "messages must exercise dot-stuffing");
        let wire = dot_stuff(&content);
        assert_eq!(wire.len(), content.len() + dot_lines + 3);
    }

    #[test]
    fn size_mix_follows_weights() {
        let corpus = Corpus::build(&"1k:75,10k:25".parse().unwrap());
        let mut rng = XorShift::new(5);
        let small = (0..10_000)
            .filter(|_| corpus.messages[corpus.pick(&mut rng)].content.len() == 1024)
            .count();
        assert!((7_000..8_000).contains(&small), "{small}");
    }
}
