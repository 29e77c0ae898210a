//! Per-shard read buffers, lent to a session only while it has bytes to read.
//!
//! A session borrows a buffer when it polls a socket and hands it back as soon as the
//! read would block, so an idle session (greeted, waiting for its next command) holds
//! no read buffer at all. Reads are frozen into `Bytes` slices of the buffer (the
//! inspector forwards slices, not copies); the buffer's unused tail serves the next
//! read, and once every slice is dropped the whole allocation is reclaimed in place.
//!
//! Buffers come in two sizes ([`ReadSize`]). Reads start small; a read that fills a
//! small buffer says the socket holds more (bulk: message content, a verbatim
//! relay), and the next reads use a large one, until a read would have fitted the
//! small one again. One large read replaces four small reads, with their sends and
//! wake-ups.

use std::cell::RefCell;

use bytes::BytesMut;

/// The two sizes of read buffer; the relay says which a side may use at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadSize {
    /// A few TCP segments, the same as glommio's default: commands, replies, and the
    /// first read of anything.
    Small,
    /// Bulk, once a read filled a small buffer.
    Large,
}

impl ReadSize {
    pub const fn bytes(self) -> usize {
        match self {
            ReadSize::Small => 16 * 1024,
            ReadSize::Large => 64 * 1024,
        }
    }

    /// A buffer with less room than this is refreshed before the next read.
    const fn min_room(self) -> usize {
        self.bytes() / 8
    }

    /// Idle buffers a shard keeps for reuse; more are freed. A session holds read
    /// buffers only while it runs (it gives them back before it waits or yields),
    /// so a few cover a shard; more would only raise its idle floor.
    const fn max_pooled(self) -> usize {
        match self {
            ReadSize::Small => 16,
            ReadSize::Large => 4,
        }
    }

    /// The size for the next read, after one that got `read` bytes into `room`: a
    /// read that filled a good part of a small buffer grows the next one, and a read a
    /// small buffer would have held shrinks it back.
    pub fn after_read(self, room: usize, read: usize) -> ReadSize {
        let filled = read == room;
        match self {
            ReadSize::Small if filled && room >= ReadSize::Small.bytes() / 2 => ReadSize::Large,
            ReadSize::Large if !filled && read < ReadSize::Small.bytes() => ReadSize::Small,
            size => size,
        }
    }
}

#[derive(Default)]
pub struct BufPool {
    small: RefCell<Vec<BytesMut>>,
    large: RefCell<Vec<BytesMut>>,
}

impl BufPool {
    /// A buffer of `size` whose initialised length is the room available for a read.
    pub fn take(&self, size: ReadSize) -> BytesMut {
        self.free(size)
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| fresh(size))
    }

    /// Takes back a buffer taken as `size`.
    pub fn give(&self, buf: BytesMut, size: ReadSize) {
        let mut free = self.free(size).borrow_mut();
        if free.len() < size.max_pooled() {
            free.push(buf);
        }
    }

    fn free(&self, size: ReadSize) -> &RefCell<Vec<BytesMut>> {
        match size {
            ReadSize::Small => &self.small,
            ReadSize::Large => &self.large,
        }
    }
}

fn fresh(size: ReadSize) -> BytesMut {
    BytesMut::zeroed(size.bytes())
}

/// Makes sure `buf` (taken as `size`) has room for a useful read. Reclaims the
/// original allocation when no slice of it is alive any more, otherwise starts a new
/// one (the old one is freed when the last slice, e.g. one the inspector holds, goes
/// away).
pub fn refill(buf: &mut BytesMut, size: ReadSize) {
    if buf.len() >= size.min_room() {
        return;
    }
    buf.clear();
    if buf.try_reclaim(size.bytes()) {
        buf.resize(size.bytes(), 0);
    } else {
        *buf = fresh(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaims_in_place_once_slices_are_gone() {
        for size in [ReadSize::Small, ReadSize::Large] {
            let mut buf = fresh(size);
            let first_ptr = buf.as_ptr();
            let slice = buf.split_to(size.bytes() - 100).freeze();
            refill(&mut buf, size);
            assert_eq!(buf.len(), size.bytes());
            assert_ne!(buf.as_ptr(), first_ptr, "a live slice forces a new buffer");
            drop(slice);

            let mut buf = fresh(size);
            let first_ptr = buf.as_ptr();
            let slice = buf.split_to(size.bytes() - 100).freeze();
            drop(slice);
            refill(&mut buf, size);
            assert_eq!(buf.len(), size.bytes());
            assert_eq!(buf.as_ptr(), first_ptr, "reclaimed in place");
        }
    }

    #[test]
    fn a_full_small_read_grows_the_next_and_a_read_that_fits_small_shrinks_it() {
        use ReadSize::{Large, Small};
        let small = Small.bytes();
        assert_eq!(Small.after_read(small, small), Large);
        assert_eq!(Small.after_read(small, 100), Small);
        // A small tail filled says little: a few command lines can do that.
        assert_eq!(Small.after_read(3000, 3000), Small);
        // Large stays while reads need more than a small buffer or fill its tail.
        assert_eq!(Large.after_read(Large.bytes(), Large.bytes()), Large);
        assert_eq!(Large.after_read(Large.bytes(), small + 1), Large);
        assert_eq!(Large.after_read(9000, 9000), Large);
        assert_eq!(Large.after_read(Large.bytes(), small - 1), Small);
    }

    #[test]
    fn each_size_is_pooled_apart_and_bounded() {
        let pool = BufPool::default();
        let large: Vec<_> = (0..10).map(|_| pool.take(ReadSize::Large)).collect();
        assert!(large.iter().all(|b| b.len() == ReadSize::Large.bytes()));
        for buf in large {
            pool.give(buf, ReadSize::Large);
        }
        assert_eq!(pool.large.borrow().len(), ReadSize::Large.max_pooled());
        assert!(pool.small.borrow().is_empty());
        assert_eq!(pool.take(ReadSize::Small).len(), ReadSize::Small.bytes());
    }
}
