//! What a session's logs say about its envelope: the HELO/EHLO name, the last MAIL
//! FROM address, recipients accepted in the current transaction, and messages and
//! transactions the server accepted. Fixed-size copies, bounded, no allocation: the
//! inspector updates it per command or reply; the driver reads it for log lines and
//! counters.

/// Bytes kept of the HELO name and of the sender address (longer ones are cut).
const HELO_LIMIT: usize = 64;
const SENDER_LIMIT: usize = 128;

/// A bounded copy of peer-supplied bytes.
#[derive(Clone, Copy)]
struct Tag<const N: usize> {
    bytes: [u8; N],
    len: u8,
    /// The original was longer than `N`.
    cut: bool,
}

impl<const N: usize> Tag<N> {
    const EMPTY: Self = Tag {
        bytes: [0; N],
        len: 0,
        cut: false,
    };

    fn set(&mut self, value: &[u8]) {
        let kept = value.len().min(N);
        self.bytes[..kept].copy_from_slice(&value[..kept]);
        self.len = kept as u8;
        self.cut = value.len() > N;
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// See the module header.
#[derive(Clone, Copy)]
pub struct Envelope {
    helo: Tag<HELO_LIMIT>,
    sender: Tag<SENDER_LIMIT>,
    recipients: u64,
    messages: u64,
    transactions: u64,
}

impl Default for Envelope {
    fn default() -> Envelope {
        Envelope {
            helo: Tag::EMPTY,
            sender: Tag::EMPTY,
            recipients: 0,
            messages: 0,
            transactions: 0,
        }
    }
}

impl Envelope {
    /// The name the client gave in HELO/EHLO (at most 64 bytes), empty before.
    pub fn helo(&self) -> &[u8] {
        self.helo.get()
    }

    /// The address of the latest MAIL FROM (at most 128 bytes), empty before.
    pub fn sender(&self) -> &[u8] {
        self.sender.get()
    }

    /// RCPTs the server accepted in the current (or latest) transaction.
    pub fn recipients(&self) -> u64 {
        self.recipients
    }

    /// Messages whose end of data the server accepted (2xx).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// MAIL commands the server accepted (2xx): transactions opened.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    pub(crate) fn on_helo(&mut self, args: &[u8]) {
        let name = args.trim_ascii();
        let name = name.split(|&b| b == b' ').next().unwrap_or(name);
        self.helo.set(name);
    }

    pub(crate) fn on_mail(&mut self, address: &[u8]) {
        self.sender.set(address);
        self.recipients = 0;
    }

    pub(crate) fn on_mail_accepted(&mut self) {
        self.transactions += 1;
    }

    pub(crate) fn on_rcpt_accepted(&mut self) {
        self.recipients += 1;
    }

    pub(crate) fn on_message_accepted(&mut self) {
        self.messages += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_bounded_and_counts_follow_the_replies() {
        let mut e = Envelope::default();
        e.on_helo(b" mx.client.example extra\r");
        assert_eq!(e.helo(), b"mx.client.example");
        e.on_mail(&[b'a'; 300]);
        assert_eq!(e.sender().len(), SENDER_LIMIT);
        e.on_mail_accepted();
        e.on_rcpt_accepted();
        e.on_rcpt_accepted();
        e.on_message_accepted();
        assert_eq!((e.transactions(), e.recipients(), e.messages()), (1, 2, 1));
        e.on_mail(b"next@example.org");
        assert_eq!(e.recipients(), 0, "recipients count per transaction");
        assert_eq!(e.sender(), b"next@example.org");
    }
}
