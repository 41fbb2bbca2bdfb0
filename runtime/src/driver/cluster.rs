//! The driver's side of the cluster link ([`crate::cluster`]): the
//! engine's cluster actions go to the link through one bounded channel;
//! what the other nodes sent comes back as finished jobs.

use super::jobs::{Job, JobKind};
use super::{Driver, Event};
use crate::cluster::{self, FromLink, LinkHandle, ToLink};
use crate::config;
use bytes::Bytes;
use roost_core::broker::{Instant, Message, RemoteOrigin};
use roost_core::codec::{PublishProperties, QoS};
use roost_core::topic::TopicName;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{error, info, warn};

/// Subscription changes and claims that wait in the driver while the
/// link's queue is full. Messages never wait here: a full queue drops them
/// (counted and logged), as a blocked loop would stall every client.
const BACKLOG: usize = 65_536;

/// This node's link to the cluster.
pub(super) struct ClusterSide {
    link: Option<LinkHandle>,
    backlog: VecDeque<ToLink>,
    acl_listener: u16,
    /// Messages dropped at the full queue since the last warning.
    unreported: u64,
    node: String,
    /// `$SYS/broker/cluster/...`: how often, and when next.
    sys_every: Option<Duration>,
    sys_next: Option<Instant>,
}

impl ClusterSide {
    /// The link for `config`, and the job that starts its thread.
    pub(super) fn new(
        config: &config::Cluster,
        sys_every: Option<Duration>,
        now: Instant,
    ) -> (ClusterSide, Event) {
        let (handle, start) = cluster::link(config);
        info!(node = %config.node, "cluster: this broker is a node of a cluster");
        (
            ClusterSide {
                link: Some(handle),
                backlog: VecDeque::new(),
                acl_listener: config.acl_listener,
                unreported: 0,
                node: config.node.clone(),
                sys_every,
                sys_next: sys_every.map(|_| now),
            },
            Event::Job(Job(JobKind::ClusterLink(Box::new(start)))),
        )
    }
}

impl Driver {
    /// An engine action for the cluster.
    pub(super) fn cluster_send(&mut self, request: ToLink) {
        let Some(side) = &mut self.cluster else {
            return;
        };
        let Some(link) = &side.link else {
            return;
        };
        let forward = matches!(request, ToLink::Forward { .. });
        if !forward && !side.backlog.is_empty() {
            Self::cluster_backlog(side, request);
            return;
        }
        match link.to_link.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) if !forward => Self::cluster_backlog(side, request),
            Err(TrySendError::Full(_)) => {
                link.stats.dropped.fetch_add(1, Ordering::Relaxed);
                side.unreported += 1;
                if side.unreported == 1 || side.unreported % 10_000 == 0 {
                    warn!(
                        dropped = side.unreported,
                        "cluster: queue to NATS full, messages not forwarded to other nodes"
                    );
                }
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn cluster_backlog(side: &mut ClusterSide, request: ToLink) {
        if side.backlog.len() >= BACKLOG {
            error!("cluster: subscription changes dropped: the link to NATS is stuck");
            return;
        }
        side.backlog.push_back(request);
    }

    /// Retries what waits for room in the link's queue.
    pub(super) fn cluster_flush(&mut self) {
        let Some(side) = &mut self.cluster else {
            return;
        };
        let Some(link) = &side.link else {
            return;
        };
        if side.unreported > 0 && link.to_link.capacity() > 0 {
            side.unreported = 0;
        }
        while let Some(request) = side.backlog.pop_front() {
            if let Err(e) = link.to_link.try_send(request) {
                if let TrySendError::Full(request) = e {
                    side.backlog.push_front(request);
                }
                break;
            }
        }
    }

    /// What the other nodes sent: messages (authorized here like any
    /// publish), retained messages and claims.
    pub(super) fn cluster_received(&mut self, now: Instant, batch: Vec<FromLink>) {
        let Some(side) = &self.cluster else {
            return;
        };
        let listener = side.acl_listener;
        let outstanding = side.link.as_ref().map(|l| l.outstanding.clone());
        // Status items travel outside the bound on outstanding messages.
        let n = batch
            .iter()
            .filter(|i| !matches!(i, FromLink::Status))
            .count();
        let mut status = false;
        for item in batch {
            match item {
                FromLink::Message {
                    message,
                    client_id,
                    username,
                    target,
                } => {
                    let from = RemoteOrigin {
                        client_id: client_id.as_ref(),
                        username: username.as_ref(),
                        listener,
                    };
                    self.broker.publish_remote(now, message, from, &target);
                }
                FromLink::Retained(message) => self.broker.set_retained(now, message),
                FromLink::Status => status = true,
                FromLink::Release {
                    client_id,
                    clean_start,
                } => {
                    if self.broker.release_client(now, &client_id, clean_start) {
                        info!(client_id = %client_id, "cluster: client connected on another node; its session here ends");
                    }
                }
                FromLink::Fetched { token, session } => {
                    if let Some(s) = &session {
                        info!(client_id = %s.client_id, subscriptions = s.subscriptions.len(), messages = s.messages.len(), "cluster: session moved here from another node");
                    }
                    self.broker.session_fetched(now, token, session.map(|s| *s));
                }
                FromLink::HandOver {
                    client_id,
                    owner,
                    reply,
                } => {
                    let session = self.broker.hand_over(now, &client_id, &owner);
                    if session.is_some() {
                        info!(client_id = %client_id, "cluster: client reconnected on another node; its session moved there");
                    }
                    self.cluster_send(ToLink::HandedOver {
                        reply,
                        session: session.map(Box::new),
                    });
                }
            }
        }
        if let Some(outstanding) = outstanding {
            outstanding.fetch_sub(n, Ordering::AcqRel);
        }
        if status {
            if let Some(side) = &mut self.cluster {
                if side.sys_every.is_some() {
                    side.sys_next = Some(now);
                }
            }
            self.cluster_handle_timeout(now);
        }
    }

    /// Lets go of the link: its thread sends what is queued and ends.
    pub(super) fn cluster_stop(&mut self) {
        if let Some(side) = &mut self.cluster {
            side.backlog.clear();
            side.link = None;
        }
    }

    /// When the cluster's `$SYS` topics are next due.
    pub(super) fn cluster_timeout(&self) -> Option<Instant> {
        self.cluster.as_ref().and_then(|s| s.sys_next)
    }

    /// Publishes this node's view of the cluster, retained, every `$SYS`
    /// interval: `$SYS/broker/cluster/{node,connected,forwarded,received,dropped,claims}`,
    /// and the totals `$SYS/broker/cluster/nodes` (nodes alive, this one
    /// included) and `$SYS/broker/cluster/clients/connected` (clients
    /// connected to any of them, as their last heartbeats said).
    pub(super) fn cluster_handle_timeout(&mut self, now: Instant) {
        let connected = self.broker.connected_count() as u64;
        let Some(side) = &mut self.cluster else {
            return;
        };
        // What this node's heartbeats tell the others.
        if let Some(link) = &side.link {
            link.stats.local_clients.store(connected, Ordering::Relaxed);
        }
        let (Some(at), Some(every)) = (side.sys_next, side.sys_every) else {
            return;
        };
        if at > now {
            return;
        }
        side.sys_next = Some(now + every);
        let Some(link) = &side.link else {
            return;
        };
        let stats = &link.stats;
        let values = [
            ("node", side.node.clone()),
            (
                "connected",
                stats.connected.load(Ordering::Relaxed).to_string(),
            ),
            (
                "forwarded",
                stats.forwarded.load(Ordering::Relaxed).to_string(),
            ),
            (
                "received",
                stats.received.load(Ordering::Relaxed).to_string(),
            ),
            ("dropped", stats.dropped.load(Ordering::Relaxed).to_string()),
            ("claims", stats.claims.load(Ordering::Relaxed).to_string()),
            ("nodes", stats.nodes.load(Ordering::Relaxed).to_string()),
            (
                "clients/connected",
                stats.clients.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, value) in values {
            let Ok(topic) = TopicName::copy_from_str(&format!("$SYS/broker/cluster/{name}")) else {
                continue;
            };
            self.broker.publish(
                now,
                Message {
                    topic,
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: PublishProperties::default(),
                },
            );
        }
    }

    /// The link's counters, if this broker is a node of a cluster.
    pub fn cluster_stats(&self) -> Option<&cluster::ClusterStats> {
        self.cluster
            .as_ref()
            .and_then(|s| s.link.as_ref())
            .map(|l| &*l.stats)
    }
}
