//! Per-shard read buffers, lent to a session only while it has bytes to read.
//!
//! A session borrows a buffer when it polls a socket and hands it back as soon as the
//! read would block, so an idle session (greeted, waiting for its next command) holds
//! no read buffer at all. Reads are frozen into `Bytes` slices of the buffer (the
//! inspector forwards slices, not copies); the buffer's unused tail serves the next
//! read, and once every slice is dropped the whole allocation is reclaimed in place.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of one read buffer: a few TCP segments, the same as glommio's default.
pub const BUF_SIZE: usize = 16 * 1024;
/// A buffer with less room than this is refreshed before the next read.
const MIN_READ: usize = 2 * 1024;
/// Idle buffers a shard keeps for reuse; more are freed. 16 (256 KiB) covers the reads
/// one shard has in flight between two yields; more only raises the idle floor.
const MAX_POOLED: usize = 16;

#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<BytesMut>>,
}

impl BufPool {
    /// A buffer whose initialised length is the room available for one read.
    pub fn take(&self) -> BytesMut {
        self.free.borrow_mut().pop().unwrap_or_else(fresh)
    }

    pub fn give(&self, buf: BytesMut) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_POOLED {
            free.push(buf);
        }
    }
}

fn fresh() -> BytesMut {
    BytesMut::zeroed(BUF_SIZE)
}

/// Makes sure `buf` has room for a useful read. Reclaims the original allocation when
/// no slice of it is alive any more, otherwise starts a new one (the old one is freed
/// when the last slice, e.g. one the inspector holds, goes away).
pub fn refill(buf: &mut BytesMut) {
    if buf.len() >= MIN_READ {
        return;
    }
    buf.clear();
    if buf.try_reclaim(BUF_SIZE) {
        buf.resize(BUF_SIZE, 0);
    } else {
        *buf = fresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaims_in_place_once_slices_are_gone() {
        let mut buf = fresh();
        let first_ptr = buf.as_ptr();
        let slice = buf.split_to(BUF_SIZE - 100).freeze();
        refill(&mut buf);
        assert_eq!(buf.len(), BUF_SIZE);
        assert_ne!(buf.as_ptr(), first_ptr, "a live slice forces a new buffer");
        drop(slice);

        let mut buf = fresh();
        let first_ptr = buf.as_ptr();
        let slice = buf.split_to(BUF_SIZE - 100).freeze();
        drop(slice);
        refill(&mut buf);
        assert_eq!(buf.len(), BUF_SIZE);
        assert_eq!(buf.as_ptr(), first_ptr, "reclaimed in place");
    }
}
