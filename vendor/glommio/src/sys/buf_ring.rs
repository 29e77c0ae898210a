//! smtpgate patch: a provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux
//! 5.19) for multishot socket receives (`GLOMMIO_RECV_MULTISHOT=1`, an
//! experiment: see `ReadinessMode::RecvMultishot`). The kernel picks a buffer
//! from the ring for each receive and names it in the completion; the stream
//! copies the bytes out and gives the buffer back.
use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io,
    os::unix::io::RawFd,
    ptr,
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
};

/// `IORING_REGISTER_PBUF_RING`.
const REGISTER_PBUF_RING: libc::c_uint = 22;
/// The buffer group the receives select from (one ring per reactor).
pub(crate) const RECV_BUFFER_GROUP: u16 = 1;
/// Ring size and buffer size: 256 buffers of 16 KiB (4 MiB per executor), the
/// relay's read size; a receive takes a whole buffer whatever it fills.
const ENTRIES: u16 = 256;
const BUF_SIZE: usize = 16 * 1024;

/// `struct io_uring_buf`: the ring's entry (the first entry's last field is the
/// ring's tail).
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    tail_or_reserved: u16,
}

/// `struct io_uring_buf_reg`.
#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    reserved: [u64; 3],
}

#[derive(Debug)]
pub(crate) struct BufRing {
    entries: *mut RingEntry,
    buffers: *mut u8,
    tail: Cell<u16>,
}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping; the result is checked.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr.cast())
}

impl BufRing {
    /// Maps the ring and its buffers, registers them with the ring `ring_fd`
    /// and hands every buffer to the kernel.
    pub(crate) fn register(ring_fd: RawFd) -> io::Result<Rc<BufRing>> {
        let entries = map(ENTRIES as usize * std::mem::size_of::<RingEntry>())?.cast::<RingEntry>();
        let buffers = map(ENTRIES as usize * BUF_SIZE)?;
        let ring = BufRing {
            entries,
            buffers,
            tail: Cell::new(0),
        };
        let reg = BufReg {
            ring_addr: entries as u64,
            ring_entries: ENTRIES as u32,
            bgid: RECV_BUFFER_GROUP,
            flags: 0,
            reserved: [0; 3],
        };
        // SAFETY: `reg` describes the mapping above, which lives as long as the
        // returned ring (the reactor keeps it until its rings are closed).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring_fd,
                REGISTER_PBUF_RING,
                &reg as *const BufReg,
                1,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        for bid in 0..ENTRIES {
            ring.give_back(bid);
        }
        Ok(Rc::new(ring))
    }

    /// The first `len` bytes the kernel received into buffer `bid`.
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < ENTRIES && len <= BUF_SIZE);
        // SAFETY: in bounds of the mapping; the kernel is done with the buffer
        // until it is given back.
        unsafe { std::slice::from_raw_parts(self.buffers.add(bid as usize * BUF_SIZE), len) }
    }

    /// Returns buffer `bid` to the kernel.
    pub(crate) fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        // SAFETY: the slot is in the mapping; the kernel reads it only once the
        // tail (published below, with release ordering) covers it.
        unsafe {
            let slot = self.entries.add((tail & (ENTRIES - 1)) as usize);
            (*slot).addr = self.buffers.add(bid as usize * BUF_SIZE) as u64;
            (*slot).len = BUF_SIZE as u32;
            (*slot).bid = bid;
            let shared_tail = &*ptr::addr_of!((*self.entries).tail_or_reserved).cast::<AtomicU16>();
            shared_tail.store(tail.wrapping_add(1), Ordering::Release);
        }
        self.tail.set(tail.wrapping_add(1));
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mappings made in `register`; the ring that used them is
        // closed by now (the reactor drops its rings first).
        unsafe {
            libc::munmap(
                self.entries.cast(),
                ENTRIES as usize * std::mem::size_of::<RingEntry>(),
            );
            libc::munmap(self.buffers.cast(), ENTRIES as usize * BUF_SIZE);
        }
    }
}

/// What a multishot receive delivered and its stream has not read yet: each
/// completion's result, with the buffer it filled. Buffers still here when the
/// source goes are given back.
#[derive(Debug)]
pub(crate) struct RecvQueue {
    ring: Rc<BufRing>,
    received: RefCell<VecDeque<(i32, Option<u16>)>>,
}

impl RecvQueue {
    pub(crate) fn new(ring: Rc<BufRing>) -> RecvQueue {
        RecvQueue {
            ring,
            received: RefCell::new(VecDeque::new()),
        }
    }

    pub(crate) fn push(&self, result: i32, bid: Option<u16>) {
        self.received.borrow_mut().push_back((result, bid));
    }

    pub(crate) fn pop(&self) -> Option<Received> {
        let (result, bid) = self.received.borrow_mut().pop_front()?;
        if let (len, Some(bid)) = (result, bid) {
            if len > 0 {
                return Some(Received::Bytes(ReceivedBuf {
                    ring: self.ring.clone(),
                    bid,
                    start: 0,
                    end: len as usize,
                }));
            }
            // The kernel recycles the buffer of an empty or failed receive and
            // names none; should it name one, it is ours to give back.
            self.ring.give_back(bid);
        }
        Some(match result {
            0 => Received::End,
            err => Received::Error(io::Error::from_raw_os_error(-err)),
        })
    }
}

impl Drop for RecvQueue {
    fn drop(&mut self) {
        for (_, bid) in self.received.get_mut().drain(..) {
            if let Some(bid) = bid {
                self.ring.give_back(bid);
            }
        }
    }
}

pub(crate) enum Received {
    Bytes(ReceivedBuf),
    End,
    Error(io::Error),
}

/// A received buffer being read; given back to the kernel when dropped.
#[derive(Debug)]
pub(crate) struct ReceivedBuf {
    ring: Rc<BufRing>,
    bid: u16,
    start: usize,
    end: usize,
}

impl ReceivedBuf {
    /// Copies what fits into `out`; true when the buffer is used up.
    pub(crate) fn read_into(&mut self, out: &mut [u8]) -> (usize, bool) {
        let bytes = &self.ring.bytes(self.bid, self.end)[self.start..];
        let n = bytes.len().min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
        self.start += n;
        (n, self.start == self.end)
    }
}

impl Drop for ReceivedBuf {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}
