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

    /// Holds `addr` as a `sockaddr_in`/`sockaddr_in6` for a connect; returns
    /// the pointer and length the kernel reads.
    pub(crate) fn hold(&mut self, addr: SocketAddr) -> (*const libc::sockaddr, libc::socklen_t) {
        let storage: *mut libc::sockaddr_storage = &mut self.addr;
        self.len = match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for
                // every sockaddr; the cast view is written whole.
                let out = unsafe { &mut *storage.cast::<libc::sockaddr_in>() };
                out.sin_family = libc::AF_INET as libc::sa_family_t;
                out.sin_port = v4.port().to_be();
                out.sin_addr = libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                // SAFETY: as above, for a sockaddr_in6.
                let out = unsafe { &mut *storage.cast::<libc::sockaddr_in6>() };
                out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                out.sin6_port = v6.port().to_be();
                out.sin6_flowinfo = v6.flowinfo();
                out.sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                out.sin6_scope_id = v6.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        };
        (storage.cast_const().cast(), self.len)
    }
}
