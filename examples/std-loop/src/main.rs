//! `roost-std`: the whole roost broker in a hand-written event loop, with
//! nothing but the standard library's non-blocking sockets under the
//! sans-IO driver: no async runtime, no mio, no epoll.
//!
//! TLS, WebSocket, password files, ACLs, the fjall store and both
//! durabilities, the bounded password checks, linger and the shutdown grace
//! period all come from [`Driver`]; this file only moves bytes, runs the
//! driver's jobs on [`Pool`]'s threads and keeps time. It takes the same
//! command line and configuration as `roost`:
//!
//! ```text
//! cargo run -p roost-std-loop -- --config roost.toml
//! ```
//!
//! The loop polls every socket in turn and naps for a millisecond when a
//! turn found nothing to do, so it spends a little CPU while idle and adds
//! up to a millisecond of latency: the price of having no readiness API.
//! That is why the real runtimes (`roost-tokio`, `roost-smol`, `roost-mio`)
//! exist; this one exists to show that the driver needs nothing more. Its
//! tests run the same parity and adversarial suites as theirs.
//!
//! One step:
//!
//! ```text
//!  accept until WouldBlock ──► Driver::handle_accept
//!  read each socket the driver wants read ──► Driver::handle_read
//!  jobs done on the pool ──► Driver::handle_job_done
//!  deadline passed ──► Driver::handle_timeout
//!  Driver::poll_event: Wake ──► write that socket (Driver::handle_write),
//!                      Job ──► the pool, StopListening, Stopped
//!  nap if nothing happened
//! ```

use roost_core::broker::ConnId;
use roost_runtime::clock::Clock;
use roost_runtime::driver::{Driver, Event, Files, WriteStatus};
use roost_runtime::net::{Listeners, READS_PER_TURN};
use roost_runtime::pool::Pool;
use roost_runtime::service::Service;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest nap between idle turns.
const NAP: Duration = Duration::from_millis(1);

/// What the outside world can ask of the loop, between turns.
#[derive(Default)]
struct Requests {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

struct Conn {
    stream: TcpStream,
    shut_write: bool,
}

fn main() -> ExitCode {
    let mut service = match roost_runtime::cli::start("roost-std") {
        roost_runtime::cli::Start::Exit(code) => return code,
        roost_runtime::cli::Start::Serve(service) => service,
    };
    let requests = Requests::default();
    for (signal, flag) in [
        (signal_hook::consts::SIGTERM, &requests.stop),
        (signal_hook::consts::SIGINT, &requests.stop),
        (signal_hook::consts::SIGHUP, &requests.reload),
    ] {
        if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
            eprintln!("roost-std: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    match serve(&mut service, &requests) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost-std: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until a stop is requested and the driver has closed every
/// connection and flushed its store.
fn serve(service: &mut Service, requests: &Requests) -> io::Result<()> {
    let config = service.config().clone();
    let clock = Clock::new();
    let mut driver = Driver::open(&config, clock.now())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // The driver's listeners: the configured MQTT ones, then `[http]`.
    let mut listeners = Listeners::default();
    let configured: Vec<_> = driver.listeners().cloned().collect();
    for (index, l) in configured.iter().enumerate() {
        let listener = roost_runtime::net::listen_on(l)?;
        driver.handle_listening(index, listener.local_addr()?);
        listeners.insert(index, listener);
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    service
        .ready()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let jobs_done = Arc::new(AtomicBool::new(false));
    let flag = jobs_done.clone();
    let pool = Pool::start(Arc::new(move || flag.store(true, Ordering::Release)))?;

    let mut conns: HashMap<ConnId, Conn> = HashMap::new();
    let mut to_write: HashSet<ConnId> = HashSet::new();
    let mut accept_retry: Option<Instant> = None;
    let mut read_buf = vec![0u8; 64 * 1024];
    let (dialled_tx, dialled_rx) = std::sync::mpsc::channel::<(ConnId, io::Result<TcpStream>)>();
    loop {
        let mut busy = false;
        if requests.stop.swap(false, Ordering::AcqRel) {
            service.stopping();
            driver.handle_shutdown(clock.now());
        }
        if requests.reload.swap(false, Ordering::AcqRel) {
            tracing::info!("SIGHUP: reloading");
            let config = service.reload();
            let errors = driver.handle_reload(clock.now(), &config, Files::load(&config));
            if errors.is_empty() {
                tracing::info!("configuration, certificates, password and ACL files reloaded");
            }
            service.reloaded();
        }

        if accept_retry.is_none_or(|at| at <= Instant::now()) {
            accept_retry = None;
            for (index, listener) in listeners.iter() {
                loop {
                    match listener.accept() {
                        Ok((stream, remote)) => {
                            busy = true;
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let _ = stream.set_nodelay(true);
                            let id = driver.handle_accept(clock.now(), index, Some(remote));
                            conns.insert(
                                id,
                                Conn {
                                    stream,
                                    shut_write: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of descriptors, typically: the driver says
                            // when to try again.
                            let until = driver.handle_accept_error(clock.now(), index, &e);
                            accept_retry = Some(clock.deadline(until));
                            break;
                        }
                    }
                }
            }
        }

        let mut gone = Vec::new();
        for (&id, conn) in &mut conns {
            for _ in 0..READS_PER_TURN {
                if !driver.interest(id).read {
                    break;
                }
                match conn.stream.read(&mut read_buf) {
                    Ok(0) => {
                        gone.push(id);
                        break;
                    }
                    Ok(n) => {
                        busy = true;
                        driver.handle_read(clock.now(), id, &read_buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone.push(id);
                        break;
                    }
                }
            }
        }
        for id in gone {
            conns.remove(&id);
            to_write.remove(&id);
            driver.handle_closed(clock.now(), id);
        }

        // Dials that finished, then served like any other connection.
        while let Ok((conn, dialled)) = dialled_rx.try_recv() {
            busy = true;
            match dialled {
                Ok(stream) => {
                    driver.handle_connected(clock.now(), conn, stream.peer_addr().ok());
                    conns.insert(
                        conn,
                        Conn {
                            stream,
                            shut_write: false,
                        },
                    );
                }
                Err(e) => driver.handle_connect_failed(clock.now(), conn, &e),
            }
        }

        if jobs_done.swap(false, Ordering::AcqRel) {
            while let Some(done) = pool.take_done() {
                busy = true;
                driver.handle_job_done(clock.now(), done);
            }
        }
        let now = clock.now();
        if driver.poll_timeout().is_some_and(|at| at <= now) {
            driver.handle_timeout(now);
        }

        while let Some(event) = driver.poll_event() {
            match event {
                Event::Wake(id) => {
                    to_write.insert(id);
                }
                Event::Job(job) => pool.submit(job),
                Event::StopListening => drop(listeners.take_all()),
                // A listener a reload added, numbered after the others.
                Event::Listen {
                    listener,
                    bind,
                    reuse_port,
                } => {
                    listeners.listen(&mut driver, listener, bind, reuse_port, Ok);
                }
                Event::Unlisten { listener } => drop(listeners.remove(listener)),
                Event::Stopped => return Ok(()),
                // A bridge's outbound connection: std has no non-blocking
                // connect, so a thread dials and hands the stream back.
                Event::Connect { conn, addr } => {
                    let dialled = dialled_tx.clone();
                    std::thread::spawn(move || {
                        let _ = dialled.send((conn, roost_runtime::net::dial(&addr)));
                    });
                }
                // No in-process subscribers and no host-decided
                // authentication here: passwords and ACLs come from files.
                _ => {}
            }
        }

        // Write what the driver has; a socket the kernel will not take more
        // from stays in the set for the next turn.
        let mut released = Vec::new();
        to_write.retain(|&id| {
            let Some(conn) = conns.get_mut(&id) else {
                return false;
            };
            let stream = &mut conn.stream;
            let status = driver.handle_write(clock.now(), id, |bufs| stream.write_vectored(bufs));
            let interest = driver.interest(id);
            if status.is_err() || interest.close {
                released.push((id, status.is_err()));
                return false;
            }
            if interest.shutdown_write && !conn.shut_write {
                conn.shut_write = true;
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
            matches!(status, Ok(WriteStatus::WouldBlock))
        });
        for (id, failed) in released {
            conns.remove(&id);
            if failed {
                driver.handle_closed(clock.now(), id);
            }
        }

        if !busy {
            let until_deadline = driver
                .poll_timeout()
                .map(|at| clock.deadline(at).saturating_duration_since(Instant::now()));
            std::thread::sleep(until_deadline.map_or(NAP, |d| d.min(NAP)));
        }
    }
}
