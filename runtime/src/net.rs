//! Listening sockets, made the same way for every runtime.

use std::io;
use std::net::{SocketAddr, TcpListener};

use crate::driver::Driver;

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

/// A loop's listening sockets by listener number (the driver's numbering:
/// configuration order, then those a reload adds), in whatever socket type
/// the loop accepts on. Removing one drops it, which closes it at once: a
/// reload that removes a listener, or a shutdown, refuses new connections
/// from that moment.
#[derive(Debug)]
pub struct Listeners<L> {
    slots: Vec<Option<L>>,
}

impl<L> Default for Listeners<L> {
    fn default() -> Self {
        Listeners { slots: Vec::new() }
    }
}

impl<L> Listeners<L> {
    /// Binds listener number `index` (one a reload added) on `bind` with
    /// [`listen_with`] (`SO_REUSEPORT` if `reuse_port`), makes it the loop's own socket with `wrap` (which may
    /// register it with the loop's poller), keeps it, and tells `driver`
    /// how it went: its address, or why it is left out. Whether it is
    /// listening.
    pub fn listen(
        &mut self,
        driver: &mut Driver,
        index: usize,
        bind: SocketAddr,
        reuse_port: bool,
        wrap: impl FnOnce(TcpListener) -> io::Result<L>,
    ) -> bool {
        let bound = listen_with(bind, reuse_port).and_then(|l| Ok((l.local_addr()?, wrap(l)?)));
        match bound {
            Ok((addr, listener)) => {
                self.insert(index, listener);
                driver.handle_listening(index, addr);
                true
            }
            Err(e) => {
                driver.handle_listen_failed(index, &e);
                false
            }
        }
    }

    /// Keeps `listener` as listener number `index`, dropping the one it
    /// replaces.
    pub fn insert(&mut self, index: usize, listener: L) {
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some(listener);
    }

    /// Listener number `index`, unless it is gone.
    pub fn get(&self, index: usize) -> Option<&L> {
        self.slots.get(index)?.as_ref()
    }

    /// Listener number `index`, mutably, unless it is gone.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut L> {
        self.slots.get_mut(index)?.as_mut()
    }

    /// Takes listener number `index` out (a reload removed it).
    pub fn remove(&mut self, index: usize) -> Option<L> {
        self.slots.get_mut(index)?.take()
    }

    /// Takes every listener out (the broker stops listening).
    pub fn take_all(&mut self) -> Vec<L> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// One more than the highest listener number ever kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no listener was ever kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each listener still kept, with its number.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &L)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.as_ref()?)))
    }
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

    #[test]
    fn a_removed_listener_is_closed_and_its_number_kept() {
        let mut listeners = Listeners::default();
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        listeners.insert(0, first);
        listeners.insert(2, listen("127.0.0.1:0".parse().unwrap()).unwrap());
        assert_eq!(listeners.len(), 3);
        assert!(listeners.get(1).is_none());
        assert_eq!(listeners.iter().map(|(i, _)| i).collect::<Vec<_>>(), [0, 2]);

        drop(listeners.remove(0));
        assert!(listeners.get(0).is_none());
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "a removed listener still accepts"
        );
        assert_eq!(listeners.take_all().len(), 1);
        assert_eq!(listeners.iter().count(), 0);
        assert_eq!(listeners.len(), 3, "numbers are the driver's, never reused");
    }
}
