//! Listening sockets, made the same way for every runtime.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// How many finished handshakes the kernel holds for a listener before the
/// broker accepts them. Past it, new clients' handshakes are dropped and
/// retried a second later, so a storm of reconnecting clients needs room:
/// 1,024 like mio's default (Mosquitto uses 100; Rust's standard library
/// 128), and Linux caps it at `net.core.somaxconn` anyway.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds a non-blocking TCP listener on `addr` with [`LISTEN_BACKLOG`],
/// reusing the address so a restarted broker does not wait out TIME_WAIT.
/// The error names the address.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_with(addr, false)
}

/// The listening socket of a configured listener: [`listen`], with
/// `SO_REUSEPORT` when the listener asks for it
/// ([`crate::config::Listener::reuse_port`]).
pub fn listen_on(listener: &crate::config::Listener) -> io::Result<TcpListener> {
    listen_with(listener.bind, listener.reuse_port)
}

/// [`listen`], with `SO_REUSEPORT` when `reuse_port` is set (what
/// [`crate::driver::Event::Listen`] carries).
pub fn listen_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            #[cfg(unix)]
            socket.set_reuse_port(true)?;
            // The configuration refuses it elsewhere.
            #[cfg(not(unix))]
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "reuse_port needs a Unix system",
            ));
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    bind().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Reads of one socket before a runtime lets the other connections on its
/// thread have a turn (the rest is read on the next one), so that a peer
/// that floods cannot starve the others.
pub const READS_PER_TURN: usize = 16;

/// Connects to `addr` (`host:port`) for a bridge, trying each address the
/// name resolves to within [`crate::driver::DIAL_TIMEOUT`], and returns a
/// non-blocking stream with `TCP_NODELAY`. It blocks, so a loop calls it off
/// its own thread (`examples/std-loop` does); the async runtimes and
/// `roost-mio` connect without blocking instead.
pub fn dial(addr: &str) -> io::Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for a in addr.to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&a, crate::driver::DIAL_TIMEOUT) {
            Ok(stream) => {
                stream.set_nonblocking(true)?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_address_is_named_in_the_error() {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = listen(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn listeners_with_reuse_port_share_a_port() {
        let mut listener = crate::config::Listener::default_local();
        listener.bind = "127.0.0.1:0".parse().unwrap();
        listener.reuse_port = true;
        let first = listen_on(&listener).unwrap();
        listener.bind = first.local_addr().unwrap();
        let second = listen_on(&listener).unwrap();
        assert_eq!(second.local_addr().unwrap(), listener.bind);
        // Without it, the port is taken.
        listener.reuse_port = false;
        let err = listen_on(&listener).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn the_listener_accepts() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        assert!(listener.accept().is_ok());
    }
}
