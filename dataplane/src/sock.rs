//! The few socket calls glommio does not offer, as thin safe wrappers over libc:
//! half-close, abortive close, an immediate acknowledgement, gathered non-blocking send.

use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// Sends FIN: the peer reads end of stream, our side may still read.
pub fn shutdown_write(socket: &impl AsRawFd) {
    // SAFETY: a plain syscall on a descriptor the caller owns and keeps open.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
}

/// Makes the next close send RST instead of FIN (the `reset` action).
pub fn set_abortive_close(socket: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(socket, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// Acknowledges what was read at once instead of after the delayed-ACK timer
/// (`TCP_QUICKACK`), for a peer that waits for that acknowledgement before it sends.
pub fn acknowledge_now(socket: &impl AsRawFd) {
    set_option(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_QUICKACK,
        &(1 as libc::c_int),
    );
}

/// `setsockopt` with `value` as the option's bytes. Best effort: an option a socket
/// refuses changes nothing the session depends on.
fn set_option<T>(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: `value` is an initialised T and the length given is its size; the
    // descriptor is owned by the caller and open.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
}

/// At most this many chunks go out in one `sendmsg`.
pub const MAX_IOVECS: usize = 16;

/// One non-blocking `sendmsg` of the first [`MAX_IOVECS`] chunks of `chunks`.
pub fn send_gathered<'a>(
    socket: &impl AsRawFd,
    chunks: impl IntoIterator<Item = &'a Bytes>,
) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOVECS];
    let mut count = 0;
    for (slot, chunk) in iov.iter_mut().zip(chunks) {
        *slot = libc::iovec {
            iov_base: chunk.as_ptr() as *mut libc::c_void,
            iov_len: chunk.len(),
        };
        count += 1;
    }
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count as _;
    // SAFETY: every iovec points into a live `Bytes` borrowed for the call.
    let n = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
