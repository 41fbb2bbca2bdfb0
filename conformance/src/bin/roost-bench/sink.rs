//! A trivially fast stand-in broker used only to measure the generator's own
//! ceiling. It acknowledges everything at once and forwards each PUBLISH to
//! matching subscribers; it has no sessions, no retained store, no limits
//! and unbounded output buffers, so it is not a broker to compare against —
//! just the cheapest thing that lets every scenario's traffic flow.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::client::ReadBuf;
use crate::wire::{self, Packet, kind};

/// Bytes waiting to go to one connection; the writer task swaps it out.
#[derive(Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    ready: Notify,
    next_pid: Cell<u16>,
    closed: Cell<bool>,
}

impl Outbox {
    fn pid(&self) -> u16 {
        let p = self.next_pid.get() % 65_535 + 1;
        self.next_pid.set(p);
        p
    }
}

#[derive(Default)]
struct Router {
    exact: HashMap<Vec<u8>, Vec<(u8, Rc<Outbox>)>>,
    wild: Vec<(Vec<u8>, u8, Rc<Outbox>)>,
}

impl Router {
    fn remove(&mut self, o: &Rc<Outbox>) {
        self.wild.retain(|(_, _, x)| !Rc::ptr_eq(x, o));
        self.exact.retain(|_, v| {
            v.retain(|(_, x)| !Rc::ptr_eq(x, o));
            !v.is_empty()
        });
    }
}

fn matches(filter: &[u8], topic: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (None, None) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Serves until `deadline_s` passes.
pub async fn serve(host: &str, port: u16, deadline_s: u64) -> io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    eprintln!("sink listening on {host}:{port} for {deadline_s}s");
    let router = Rc::new(RefCell::new(Router::default()));
    let accept = async {
        loop {
            let (s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let (mut rd, wr) = s.into_split();
            let out = Rc::new(Outbox::default());
            tokio::task::spawn_local(writer(wr, out.clone()));
            let router = router.clone();
            tokio::task::spawn_local(async move {
                let _ = reader(&mut rd, out.clone(), router.clone()).await;
                // Forget the connection so later runs do not queue into it.
                router.borrow_mut().remove(&out);
                out.closed.set(true);
                out.ready.notify_one();
            });
        }
    };
    match tokio::time::timeout(Duration::from_secs(deadline_s), accept).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

async fn writer(mut wr: OwnedWriteHalf, out: Rc<Outbox>) -> io::Result<()> {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        out.ready.notified().await;
        if out.closed.get() {
            return Ok(());
        }
        std::mem::swap(&mut spare, &mut *out.buf.borrow_mut());
        if !spare.is_empty() {
            wr.write_all(&spare).await?;
            spare.clear();
        }
    }
}

async fn reader(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    me: Rc<Outbox>,
    router: Rc<RefCell<Router>>,
) -> io::Result<()> {
    let mut rb = ReadBuf::new();
    // Subscribers touched by this read batch, woken once at its end.
    let mut woken: Vec<Rc<Outbox>> = Vec::new();
    loop {
        rb.fill(rd).await?;
        let r = router.borrow();
        let mut mine = me.buf.borrow_mut();
        let mut new_subs = Vec::new();
        while let Some(p) = rb.next_packet()? {
            match p {
                Packet::Connect { .. } => wire::connack(&mut mine, 0),
                Packet::Subscribe { pid, filters } => {
                    let mut codes = Vec::new();
                    for (f, q) in wire::subscribe_filters(filters) {
                        new_subs.push((f.to_vec(), q.min(2)));
                        codes.push(q.min(2));
                    }
                    wire::suback(&mut mine, pid, &codes);
                }
                Packet::Publish {
                    qos,
                    retain: _,
                    pid,
                    topic,
                    payload,
                } => {
                    match qos {
                        1 => wire::ack(&mut mine, kind::PUBACK, pid),
                        2 => wire::ack(&mut mine, kind::PUBREC, pid),
                        _ => {}
                    }
                    let exact = r
                        .exact
                        .get(topic)
                        .into_iter()
                        .flatten()
                        .map(|(q, o)| (*q, o));
                    let wild = r
                        .wild
                        .iter()
                        .filter(|(f, _, _)| matches(f, topic))
                        .map(|(_, q, o)| (*q, o));
                    for (sq, o) in exact.chain(wild) {
                        let q = sq.min(qos);
                        if Rc::ptr_eq(o, &me) {
                            wire::publish(&mut mine, topic, q, false, o.pid(), payload);
                        } else {
                            wire::publish(
                                &mut o.buf.borrow_mut(),
                                topic,
                                q,
                                false,
                                o.pid(),
                                payload,
                            );
                            if !woken.iter().any(|w| Rc::ptr_eq(w, o)) {
                                woken.push(o.clone());
                            }
                        }
                    }
                }
                Packet::Pubrel(pid) => wire::ack(&mut mine, kind::PUBCOMP, pid),
                Packet::Pubrec(pid) => wire::ack(&mut mine, kind::PUBREL, pid),
                Packet::Pingreq => wire::pingresp(&mut mine),
                Packet::Disconnect => return Ok(()),
                _ => {}
            }
        }
        drop(r);
        drop(mine);
        if !new_subs.is_empty() {
            let mut r = router.borrow_mut();
            for (f, q) in new_subs {
                if f.iter().any(|&b| b == b'+' || b == b'#') {
                    r.wild.push((f, q, me.clone()));
                } else {
                    r.exact.entry(f).or_default().push((q, me.clone()));
                }
            }
        }
        me.ready.notify_one();
        for o in woken.drain(..) {
            o.ready.notify_one();
        }
    }
}
