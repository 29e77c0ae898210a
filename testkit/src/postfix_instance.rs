//! A private, complete Postfix (master, smtpd, qmgr, smtp, virtual…) on loopback, in a
//! scratch directory: its own main.cf and master.cf, queue, data directory and log
//! file, an smtpd on 127.0.0.1, and either a Maildir that receives every message for
//! [`MAILBOX_DOMAIN`] ([`Delivery::Mailbox`], a receiving MTA) or a relayhost that
//! every message goes to ([`Delivery::RelayTo`], a sending MTA). Stopped on drop.
//!
//! It needs root (Postfix's master starts as root and drops to the `postfix` user) and
//! Debian's postfix package, installed "No configuration": nothing here reads or
//! changes /etc/postfix. Services run without chroot, so no files are copied into the
//! queue directory. Postfix writes its log to `maillog` in the directory (no syslog);
//! tests assert on that log, on the Maildir and on what the SMTP client heard.

use std::ffi::CString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{
    free_port, local, peer, run_bounded, scratch_dir, wait_for_listener, wait_until, LIMIT,
};

/// The domain a [`Delivery::Mailbox`] instance accepts and delivers to its Maildir
/// (any local part, UTF-8 ones included).
pub const MAILBOX_DOMAIN: &str = "example.net";

/// Where an instance's mail goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Mail for [`MAILBOX_DOMAIN`] lands in the Maildir ([`PostfixInstance::delivered`]).
    Mailbox,
    /// Every message is relayed to this address (`relayhost = [ip]:port`), with
    /// opportunistic STARTTLS (`smtp_tls_security_level = may`): the sending MTA.
    RelayTo(SocketAddr),
}

/// Whether the instance's smtpd offers STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpdTls {
    Off,
    /// STARTTLS offered with a self-signed certificate for the instance's name.
    Offered,
    /// STARTTLS offered and required before MAIL (`smtpd_tls_security_level = encrypt`).
    Required,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct PostfixSetup {
    /// `myhostname`, the certificate's name and the log's program prefix.
    pub name: String,
    pub delivery: Delivery,
    pub smtpd_tls: SmtpdTls,
    /// Lines appended to main.cf; a later line for the same parameter wins.
    pub main_cf: Vec<String>,
}

impl PostfixSetup {
    pub fn new(name: &str, delivery: Delivery) -> PostfixSetup {
        PostfixSetup {
            name: name.to_string(),
            delivery,
            smtpd_tls: SmtpdTls::Off,
            main_cf: Vec::new(),
        }
    }

    pub fn smtpd_tls(mut self, tls: SmtpdTls) -> PostfixSetup {
        self.smtpd_tls = tls;
        self
    }

    /// Adds a main.cf line such as `smtpd_discard_ehlo_keywords = chunking`.
    pub fn main_cf(mut self, line: &str) -> PostfixSetup {
        self.main_cf.push(line.to_string());
        self
    }
}

/// A running private Postfix, stopped on drop.
pub struct PostfixInstance {
    /// The configuration directory; queue, data, Maildir and `maillog` are inside it.
    pub dir: PathBuf,
    /// The smtpd's address.
    pub smtpd: SocketAddr,
    /// With [`SmtpdTls::Offered`]/[`SmtpdTls::Required`]: the certificate it presents.
    pub certificate: Option<PathBuf>,
}

/// The services a mail system needs, none chrooted. The smtpd line is added per
/// instance.
const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl PostfixInstance {
    /// Writes the configuration, runs `postfix -c DIR start` and waits for the smtpd.
    pub fn start(setup: &PostfixSetup) -> PostfixInstance {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "a private Postfix needs root: its master starts as root and drops to the postfix user"
        );
        let postfix = peer("postfix");
        let dir = scratch_dir(&format!("postfix-{}", setup.name));
        let (owner, _) = account("postfix");
        let (mailbox_uid, mailbox_gid) = account("nobody");
        for sub in ["queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        chown(&dir.join("data"), owner, None);
        chown(&dir.join("mail"), mailbox_uid, Some(mailbox_gid));

        let certificate = match setup.smtpd_tls {
            SmtpdTls::Off => None,
            SmtpdTls::Offered | SmtpdTls::Required => {
                Some(self_signed_certificate(&dir, &setup.name))
            }
        };
        let main_cf = main_cf(setup, &dir, mailbox_uid, mailbox_gid);
        std::fs::write(dir.join("main.cf"), main_cf).unwrap();

        let mut instance = PostfixInstance {
            dir,
            smtpd: local(0),
            certificate,
        };
        // The smtpd's port is picked before Postfix binds it, so another process may
        // take it first (any outgoing connection can): then the master exits with
        // "Address already in use" and the start is tried again on another port.
        for attempt in 1..=3 {
            instance.smtpd = local(free_port());
            let master_cf = format!("{} inet n - n - - smtpd\n{MASTER_CF}", instance.smtpd);
            std::fs::write(instance.dir.join("master.cf"), master_cf).unwrap();
            // `postfix start` reports errors to syslog or a terminal, neither of which a
            // test has; what it wrote before its log file existed is in its output.
            let out = run_bounded(
                Command::new(&postfix)
                    .arg("-c")
                    .arg(&instance.dir)
                    .arg("start"),
                LIMIT,
            );
            if out.status.success() {
                break;
            }
            let log = instance.log();
            assert!(
                attempt < 3 && log.contains("Address already in use"),
                "postfix -c {} start: {}\n{}\nlog:\n{log}",
                instance.dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        wait_for_listener(instance.smtpd, LIMIT);
        instance
    }

    /// Postfix's log so far (every daemon of this instance writes it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits (bounded) until `pattern` is in the log; returns the log.
    pub fn wait_log(&self, pattern: &str) -> String {
        wait_until(LIMIT, || {
            let log = self.log();
            log.contains(pattern).then_some(log)
        })
        .unwrap_or_else(|| panic!("no {pattern:?} in Postfix's log:\n{}", self.log()))
    }

    /// The messages delivered to the Maildir, oldest first, as the files Postfix wrote:
    /// `Return-Path:` and `Delivered-To:` prepended, lines ending in LF.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let new = self.dir.join("mail/inbox/new");
        let mut files: Vec<_> = std::fs::read_dir(new)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // Maildir names start with the delivery time in seconds, then a sequence.
        files.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// Waits (bounded) until `count` messages were delivered; returns them.
    pub fn wait_delivered(&self, count: usize) -> Vec<Vec<u8>> {
        wait_until(LIMIT, || {
            let delivered = self.delivered();
            (delivered.len() >= count).then_some(delivered)
        })
        .unwrap_or_else(|| {
            panic!(
                "{count} message(s) not delivered within {LIMIT:?}; Postfix's log:\n{}",
                self.log()
            )
        })
    }

    /// Messages still in the queue (`postqueue -p`'s summary), e.g. deferred ones.
    pub fn queue_listing(&self) -> String {
        let out = run_bounded(
            Command::new(peer("postqueue"))
                .arg("-c")
                .arg(&self.dir)
                .arg("-p"),
            LIMIT,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        let Ok(postfix) = crate::process::find_peer("postfix") else {
            return;
        };
        let master = self.master_pid();
        let _ = Command::new(postfix)
            .arg("-c")
            .arg(&self.dir)
            .arg("stop")
            .output();
        // `stop` only signals the master; wait for it so its port and queue are free,
        // and kill it (and with it its children) when it lingers.
        if let Some(pid) = master {
            let gone = wait_until(Duration::from_secs(10), || {
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            });
            if gone.is_none() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl PostfixInstance {
    fn master_pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// main.cf: every path inside `dir`, loopback only, no DNS, TLS logged, SMTPUTF8 on.
fn main_cf(setup: &PostfixSetup, dir: &Path, mailbox_uid: u32, mailbox_gid: u32) -> String {
    let d = dir.display();
    let name = &setup.name;
    let mut cf = format!(
        "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
syslog_name = {name}
myhostname = {name}
mydomain = {name}
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtputf8_enable = yes
biff = no
smtp_tls_security_level = may
smtp_tls_loglevel = 2
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
maximal_backoff_time = 10s
minimal_backoff_time = 5s
queue_run_delay = 5s
"
    );
    match setup.delivery {
        Delivery::RelayTo(relay) => cf.push_str(&format!(
            "relayhost = [{}]:{}\nvirtual_mailbox_domains =\n",
            relay.ip(),
            relay.port()
        )),
        // `static:inbox/` names one Maildir (the trailing slash) for every address.
        Delivery::Mailbox => cf.push_str(&format!(
            "virtual_mailbox_domains = {MAILBOX_DOMAIN}
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{mailbox_uid}
virtual_gid_maps = static:{mailbox_gid}
"
        )),
    }
    match setup.smtpd_tls {
        SmtpdTls::Off => cf.push_str("smtpd_tls_security_level = none\n"),
        SmtpdTls::Offered | SmtpdTls::Required => {
            let level = if setup.smtpd_tls == SmtpdTls::Required {
                "encrypt"
            } else {
                "may"
            };
            cf.push_str(&format!(
                "smtpd_tls_security_level = {level}
smtpd_tls_cert_file = {d}/tls.pem
smtpd_tls_key_file = {d}/tls.key
"
            ));
        }
    }
    for line in &setup.main_cf {
        cf.push_str(line);
        cf.push('\n');
    }
    cf
}

/// A self-signed EC end-entity certificate for `name` and 127.0.0.1, made by openssl, as
/// `dir/tls.pem` and `dir/tls.key`; returns the certificate's path.
fn self_signed_certificate(dir: &Path, name: &str) -> PathBuf {
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    let out = run_bounded(
        Command::new(peer("openssl"))
            .args(["req", "-x509", "-nodes", "-days", "2"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", &format!("/CN={name}")])
            .args([
                "-addext",
                &format!("subjectAltName=DNS:{name},IP:127.0.0.1"),
            ])
            // Not a CA (openssl's default for -x509 is CA:TRUE): a verifying client
            // that trusts this very certificate refuses a CA as an end entity.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"]),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// The uid and primary gid of a system account. `getpwnam_r`, not `getpwnam`: tests
/// start instances from several threads at once, and through `getpwnam`'s one static
/// entry the `postfix` lookup can read another thread's `nobody` (a CI run found the
/// data directory not owned by `postfix` and the master unable to create its lock).
fn account(user: &str) -> (u32, u32) {
    let name = CString::new(user).unwrap();
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut strings = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory owned here and the buffer's length is given.
    let error = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            strings.as_mut_ptr(),
            strings.len(),
            &mut found,
        )
    };
    assert!(
        error == 0 && !found.is_null(),
        "no `{user}` account: install the Debian package postfix (it creates `postfix`)"
    );
    (entry.pw_uid, entry.pw_gid)
}

fn chown(path: &Path, uid: u32, gid: Option<u32>) {
    std::os::unix::fs::chown(path, Some(uid), gid)
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
