//! Binding the UDP sockets behind an allocated RTP/RTCP port pair.
//!
//! A bound pair *is* the allocation as far as the rest of the host is concerned: as long
//! as the session holds these sockets, nobody else can take its ports, whatever happens
//! to the control plane.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The two sockets of one leg.
#[derive(Debug)]
pub struct BoundPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

fn bind_one(addr: SocketAddr, dscp: Option<u8>) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(dscp) = dscp {
        // DSCP is the upper six bits of the TOS / traffic-class byte.
        let tos = u32::from(dscp) << 2;
        if addr.is_ipv6() {
            socket.set_tclass_v6(tos)?;
        } else {
            socket.set_tos_v4(tos)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Bind RTP on `rtp_port` and RTCP on `rtp_port + 1` at `ip`.
pub fn bind_pair(
    ip: IpAddr,
    rtp_port: u16,
    rtcp_port: u16,
    dscp: Option<u8>,
) -> std::io::Result<BoundPair> {
    let rtp = bind_one(SocketAddr::new(ip, rtp_port), dscp)?;
    let rtcp = bind_one(SocketAddr::new(ip, rtcp_port), dscp)?;
    Ok(BoundPair { rtp, rtcp })
}
