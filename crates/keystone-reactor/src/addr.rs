//! The address buffer an accept fills: the peer's address is captured with
//! the connection itself, so nothing asks the kernel for it later
//! (`getpeername`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A `sockaddr_storage` and its length, written by the kernel on accept.
pub(crate) struct PeerStorage {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Default for PeerStorage {
    fn default() -> PeerStorage {
        PeerStorage {
            // SAFETY: sockaddr_storage is plain integers: all zeroes is valid.
            addr: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }
}

impl PeerStorage {
    /// The accept's out-parameters; the length is reset to the capacity.
    pub(crate) fn out_params(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        (
            (&mut self.addr as *mut libc::sockaddr_storage).cast(),
            &mut self.len,
        )
    }

    /// The address the kernel wrote, for IPv4 and IPv6 peers.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        let storage: *const libc::sockaddr_storage = &self.addr;
        match i32::from(self.addr.ss_family) {
            libc::AF_INET if self.len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length
                // checked); sockaddr_storage is aligned for every sockaddr.
                let v4 = unsafe { &*storage.cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for a sockaddr_in6.
                let v6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(v6.sin6_addr.s6_addr),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}
