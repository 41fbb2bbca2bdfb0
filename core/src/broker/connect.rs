//! Connections: CONNECT and its checks, authentication, session takeover and
//! resumption, wills, and what happens when a connection or session ends.

use super::state::{
    AuthStep, Conn, ConnState, Held, HeldPacket, OutState, PendingWill, Session, SessionId,
    WillFrom,
};
use super::{
    Action, AuthDecision, AuthRequest, AuthToken, Authentication, Broker, ClientRef, CloseReason,
    ConnId, Event, Instant, Message, Operation, PublishDecision, SessionOwner, StoreOp, Verdict,
};
use crate::MqttStr;
use crate::codec::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Protocol,
    PubResponse, QoS, ReasonCode, Will,
};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use bytes::Bytes;
use core::num::NonZeroU16;
use core::time::Duration;

impl Broker {
    pub(super) fn handle_packet(&mut self, id: ConnId, packet: Packet) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let session = c.session();
        match (&c.state, packet) {
            (ConnState::AwaitingConnect, Packet::Connect(connect)) => self.on_connect(id, connect),
            // The first packet must be CONNECT [MQTT-3.1.0-1]: close without
            // an answer.
            (ConnState::AwaitingConnect, _) => {
                self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError))
            }
            (ConnState::Authenticating { .. }, Packet::Auth(auth)) => self.on_auth(id, *auth),
            (ConnState::Authenticating { .. }, _) => {
                self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError))
            }
            (ConnState::Connected { .. }, packet) => {
                let Some(session) = session else { return };
                self.on_session_packet(id, session, packet)
            }
        }
    }

    fn on_session_packet(&mut self, id: ConnId, session: SessionId, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.on_publish(id, session, p),
            Packet::PubAck(r) => self.on_puback(id, session, r),
            Packet::PubRec(r) => self.on_pubrec(id, session, r),
            Packet::PubRel(r) => self.on_pubrel(id, session, r),
            Packet::PubComp(r) => self.on_pubcomp(id, session, r),
            Packet::Subscribe(s) => self.on_subscribe(id, session, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(id, session, u),
            Packet::PingReq => self.send(id, &Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(id, session, d),
            Packet::Auth(auth) => self.on_auth(id, *auth),
            // A second CONNECT is a protocol violation [MQTT-3.1.0-2], and
            // the rest are packets only a server sends.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError)),
        }
    }

    /// A packet failed to decode: answer a bad CONNECT with the CONNACK the
    /// specification asks for, tell connected MQTT 5 clients why, close.
    pub(super) fn decode_error(&mut self, id: ConnId, error: DecodeError) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(c.state, ConnState::AwaitingConnect) {
            match error {
                // [MQTT-3.1.2-2]: CONNACK 0x01, in the format the client can
                // read (MQTT 3 for a level this broker does not know).
                DecodeError::UnsupportedProtocolLevel(_) => {
                    c.protocol = Protocol::V3_1_1;
                    self.refuse(id, ReasonCode::UnsupportedProtocolVersion);
                    return;
                }
                // process_input set the protocol from the CONNECT's level.
                _ if c.protocol == Protocol::V5 => {
                    self.refuse(id, error.reason_code());
                    return;
                }
                _ => {}
            }
        }
        self.close(id, CloseReason::Decode(error));
    }

    fn on_connect(&mut self, id: ConnId, mut connect: Box<Connect>) {
        let limits = &self.config.limits;
        let v5 = connect.protocol == Protocol::V5;
        if let Some(c) = self.conns.get_mut(&id) {
            if let Some(identity) = c.identity() {
                // The transport's proof of who this is wins over what the
                // client claims; a password has nothing left to prove.
                connect.username = Some(identity.clone());
                connect.password = None;
            }
            c.protocol = connect.protocol;
            // Even a refusing CONNACK must fit [MQTT-3.1.2-24].
            c.client_max_packet = connect
                .properties
                .maximum_packet_size
                .map_or(u32::MAX, |m| m.get());
        }
        let refusal = if self.shutting_down {
            Some(ReasonCode::ServerUnavailable)
        } else if self.connected >= limits.max_connections {
            Some(if v5 {
                ReasonCode::ServerBusy
            } else {
                ReasonCode::ServerUnavailable
            })
        } else if connect.client_id.len() > limits.max_client_id_len
            || (connect.client_id.is_empty()
                && (connect.protocol == Protocol::V3_1 || (!v5 && !connect.clean_start)))
        {
            // An empty identifier needs a clean session in 3.1.1
            // [MQTT-3.1.3-8]; 3.1 requires one [MQTT 3.1 section 3.1].
            Some(ReasonCode::ClientIdentifierNotValid)
        } else if !v5
            && limits
                .max_keepalive
                .is_some_and(|max| connect.keep_alive > max)
        {
            // MQTT 3 cannot tell a client to ping more often; like Mosquitto,
            // refuse rather than time it out unexpectedly.
            Some(ReasonCode::ClientIdentifierNotValid)
        } else if connect.properties.authentication_data.is_some()
            && connect.properties.authentication_method.is_none()
        {
            // Data without a method is a protocol error (section 3.1.2.11.10).
            Some(ReasonCode::ProtocolError)
        } else if connect.properties.authentication_method.is_some()
            && !matches!(self.config.authentication, Authentication::External)
        {
            // Only the embedding program knows enhanced authentication
            // methods; accepting one silently would leave the client
            // believing it was authenticated by it (section 4.12).
            Some(ReasonCode::BadAuthenticationMethod)
        } else if let Some(will) = &connect.will {
            if will.qos > self.config.maximum_qos {
                Some(ReasonCode::QoSNotSupported)
            } else if will.retain && !self.config.retain_available {
                Some(ReasonCode::RetainNotSupported)
            } else if will.topic.levels().count() > limits.max_topic_levels
                || will.topic.len() > limits.max_topic_length
            {
                Some(ReasonCode::TopicNameInvalid)
            } else {
                None
            }
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.refuse(id, reason);
            return;
        }
        match &self.config.authentication {
            Authentication::AllowAll => self.accept(id, connect),
            Authentication::Static {
                allow_anonymous,
                users,
            } => {
                let verdict = match &connect.username {
                    None if *allow_anonymous => Ok(()),
                    None => Err(ReasonCode::NotAuthorized),
                    Some(user) => {
                        let password = connect.password.as_deref().unwrap_or_default();
                        let ok = users
                            .iter()
                            .any(|(u, p)| u == user && constant_time_eq(p, password));
                        if ok {
                            Ok(())
                        } else {
                            Err(ReasonCode::BadUserNameOrPassword)
                        }
                    }
                };
                match verdict {
                    Ok(()) => self.accept(id, connect),
                    Err(reason) => self.refuse(id, reason),
                }
            }
            Authentication::External => {
                let request =
                    self.auth_request(id, &connect, connect.properties.authentication_data.clone());
                if let Some(c) = self.conns.get_mut(&id) {
                    if let Some(method) = &connect.properties.authentication_method {
                        c.auth_mut().method = Some(method.clone());
                    }
                    c.auth_step = AuthStep::Deciding;
                    c.state = ConnState::Authenticating { connect };
                }
                self.actions.push_back(Action::Authenticate(request));
            }
        }
    }

    fn auth_request(&mut self, id: ConnId, connect: &Connect, data: Option<Bytes>) -> AuthRequest {
        let token = AuthToken(self.fresh_id());
        self.pending_auth.insert(token, id);
        AuthRequest {
            token,
            conn: id,
            listener: self.conns.get(&id).map_or(0, |c| c.listener),
            client_id: connect.client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.clone(),
            method: connect.properties.authentication_method.clone(),
            data,
        }
    }

    /// An AUTH packet: the client's answer to a challenge while connecting,
    /// or the start or next step of a re-authentication once connected
    /// (MQTT 5 section 4.12). Anything out of turn is a protocol error.
    fn on_auth(&mut self, id: ConnId, auth: Auth) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let connecting = matches!(c.state, ConnState::Authenticating { .. });
        // The same method throughout, and only if the CONNECT named one
        // (section 4.12, [MQTT-4.12.0-5]).
        let method_matches = c.auth_method().is_some()
            && auth.properties.authentication_method.as_ref() == c.auth_method()
            && matches!(self.config.authentication, Authentication::External);
        let in_turn = match (auth.reason, c.auth_step) {
            // The answer to our AUTH 0x18 (section 4.12).
            (ReasonCode::ContinueAuthentication, AuthStep::Challenged) => true,
            // A client starts re-authentication only when connected and
            // not already re-authenticating (section 4.12.1).
            (ReasonCode::ReAuthenticate, AuthStep::Idle) => !connecting,
            _ => false,
        };
        if !method_matches || !in_turn {
            self.close_because(
                id,
                CloseReason::Protocol(ReasonCode::ProtocolError),
                Some("AUTH out of turn or with another authentication method"),
            );
            return;
        }
        c.auth_step = AuthStep::Deciding;
        let token = AuthToken(self.fresh_id());
        self.pending_auth.insert(token, id);
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let request = AuthRequest {
            token,
            conn: id,
            listener: c.listener,
            client_id: c.client_id.clone(),
            username: c.username.clone(),
            password: None,
            method: c.auth_method().cloned(),
            data: auth.properties.authentication_data,
        };
        self.actions.push_back(Action::Authenticate(request));
    }

    /// Answers an [`Action::Authenticate`] request. A token that is unknown
    /// (its connection already closed) is ignored.
    ///
    /// While connecting: `Accept` sends CONNACK, `Reject` and `Redirect` a
    /// refusing CONNACK, `Continue` an AUTH challenge (only for a client
    /// that named an Authentication Method; otherwise it is refused with
    /// 0x8C). While re-authenticating: `Accept` sends AUTH Success,
    /// `Continue` another challenge, `Reject` and `Redirect` a DISCONNECT.
    pub fn resolve_auth(&mut self, now: Instant, token: AuthToken, decision: AuthDecision) {
        self.advance(now);
        let Some(id) = self.pending_auth.remove(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.auth_step = AuthStep::Idle;
        let connecting = matches!(c.state, ConnState::Authenticating { .. });
        match decision {
            AuthDecision::Accept if connecting => {
                let state = core::mem::replace(&mut c.state, ConnState::AwaitingConnect);
                if let ConnState::Authenticating { connect } = state {
                    self.accept(id, connect);
                    self.process_input(id);
                }
            }
            AuthDecision::Accept => {
                let auth = Auth {
                    reason: ReasonCode::Success,
                    properties: AuthProperties {
                        authentication_method: c.auth_method().cloned(),
                        ..AuthProperties::default()
                    },
                };
                self.send(id, &Packet::Auth(Box::new(auth)));
            }
            AuthDecision::Continue { .. } if c.auth_method().is_none() => {
                // No method, so no AUTH packet the client could read.
                if connecting {
                    self.refuse(id, ReasonCode::BadAuthenticationMethod);
                } else {
                    self.close(
                        id,
                        CloseReason::Protocol(ReasonCode::BadAuthenticationMethod),
                    );
                }
            }
            AuthDecision::Continue { data } => {
                c.auth_step = AuthStep::Challenged;
                let auth = Auth {
                    reason: ReasonCode::ContinueAuthentication,
                    properties: AuthProperties {
                        authentication_method: c.auth_method().cloned(),
                        authentication_data: Some(data),
                        ..AuthProperties::default()
                    },
                };
                self.send(id, &Packet::Auth(Box::new(auth)));
                // The answer may be waiting in the read buffer already.
                if connecting {
                    self.process_input(id);
                }
            }
            AuthDecision::Reject(reason) if connecting => {
                self.stats.auth_failures += 1;
                self.refuse(id, reason);
            }
            AuthDecision::Reject(reason) => {
                self.stats.auth_failures += 1;
                self.close(id, CloseReason::Protocol(reason));
            }
            AuthDecision::Redirect {
                reason,
                server_reference,
            } => {
                if connecting && c.protocol == Protocol::V5 {
                    let ack = ConnAck {
                        session_present: false,
                        reason,
                        properties: ConnAckProperties {
                            server_reference: Some(server_reference),
                            ..ConnAckProperties::default()
                        },
                    };
                    self.send(id, &Packet::ConnAck(Box::new(ack)));
                    self.close(id, CloseReason::ConnectRefused(reason));
                } else if connecting {
                    self.refuse(id, reason);
                } else {
                    c.auth_mut().redirect = Some(server_reference);
                    self.close(id, CloseReason::Protocol(reason));
                }
            }
        }
        self.flush();
    }

    /// Sends CONNACK with a failure and closes [MQTT-3.2.2-5].
    pub(super) fn refuse(&mut self, id: ConnId, reason: ReasonCode) {
        let ack = ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties {
                reason_string: Some(MqttStr::from_static(super::problem::text(reason))),
                ..ConnAckProperties::default()
            },
        };
        self.send(id, &Packet::ConnAck(Box::new(ack)));
        self.close(id, CloseReason::ConnectRefused(reason));
    }

    /// An authenticated CONNECT: its will, if any, is authorized like a
    /// PUBLISH by the connecting client, then the CONNECT is admitted.
    ///
    /// A will on a `$` topic is refused whatever the policy says (clients
    /// never publish there), as is one the policy denies: CONNACK 0x87 Not
    /// authorized (MQTT 3: return code 0x05). A policy that defers is asked
    /// with an [`super::AuthorizeRequest`] for [`super::Operation::Publish`]
    /// of the will's topic, QoS and retain flag, exactly as for a PUBLISH:
    /// CONNACK waits for [`Broker::resolve_authorize`] (anything but
    /// `PublishDecision::Allow` refuses with 0x87), the connection reads
    /// nothing meanwhile, and [`super::Limits::authorize_timeout`] closes it
    /// without CONNACK ([`CloseReason::AuthorizeTimeout`]).
    fn accept(&mut self, id: ConnId, connect: Box<Connect>) {
        let (client_id, assigned) = if connect.client_id.is_empty() {
            (self.assign_client_id(), true)
        } else {
            // Its own bytes: the identifier lives as long as the session,
            // and a slice would keep the whole CONNECT packet alive with it.
            (connect.client_id.detached(), false)
        };
        let Some(will) = &connect.will else {
            self.admit(id, connect, client_id, assigned);
            return;
        };
        if will.topic.as_bytes().first() == Some(&b'$') {
            self.refuse(id, ReasonCode::NotAuthorized);
            return;
        }
        let listener = self.conns.get(&id).map_or(0, |c| c.listener);
        let client = ClientRef {
            client_id: &client_id,
            username: connect.username.as_ref(),
            listener,
        };
        match self
            .config
            .authorization
            .authorize_publish(client, &will.topic)
        {
            Verdict::Decided(PublishDecision::Allow) => {
                self.admit(id, connect, client_id, assigned);
            }
            Verdict::Decided(PublishDecision::Deny(_)) => {
                self.refuse(id, ReasonCode::NotAuthorized);
            }
            Verdict::Defer => {
                let what = Operation::Publish {
                    topic: will.topic.clone(),
                    qos: will.qos,
                    retain: will.retain,
                };
                // The request names the client as it will be known.
                if let Some(c) = self.conns.get_mut(&id) {
                    c.client_id = client_id.clone();
                    c.username = connect.username.as_ref().map(MqttStr::detached);
                }
                if let Some(request) = self.authorize_request(id, 0, what) {
                    let token = request.token;
                    let held = HeldPacket::Will {
                        token,
                        connect,
                        client_id,
                        assigned,
                    };
                    self.hold_for_authorization(id, held);
                    self.emit_authorize(request);
                }
            }
        }
    }

    /// Admits an authenticated and authorized CONNECT: takes over or
    /// creates the session, sends CONNACK, and resumes what the session had
    /// in flight. `assigned`: the broker made up `client_id`.
    ///
    /// In a cluster, a CONNECT that asks to resume a session this node
    /// does not hold first fetches it from the node that does
    /// ([`Action::FetchSession`], see `cluster.rs`).
    pub(super) fn admit(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        client_id: MqttStr,
        assigned: bool,
    ) {
        if self.config.cluster
            && !connect.clean_start
            && !assigned
            && !self.by_client_id.contains_key(&client_id)
        {
            self.fetch_session(id, connect, client_id);
            return;
        }
        self.admit_now(id, connect, client_id, assigned);
    }

    /// [`Broker::admit`] with whatever session this node holds now.
    pub(super) fn admit_now(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        client_id: MqttStr,
        assigned: bool,
    ) {
        let connect = *connect;
        let v5 = connect.protocol == Protocol::V5;
        let assigned = assigned.then(|| client_id.clone());

        // Another connection with this identifier is taken over
        // [MQTT-3.1.4-3]. Its will is held back until we know whether the
        // session continues (below).
        let mut taken_will = None;
        if let Some(&sid) = self.by_client_id.get(&client_id) {
            taken_will = self.take_over(sid);
        }
        // A session belongs to who created it: another identity with the
        // same client identifier gets a fresh one, never the old one's
        // subscriptions and messages (unless sessions are shared).
        let identity = SessionOwner {
            class: self.conns.get(&id).map_or(0, |c| c.auth_class),
            username: connect.username.as_ref().map(MqttStr::detached),
        };
        let share = self.config.share_sessions_across_identities;
        let existing = self.by_client_id.get(&client_id).copied();
        let session_present = match existing {
            Some(sid) if connect.clean_start => {
                self.end_session(sid);
                false
            }
            Some(sid) => {
                let owned = self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.owner.as_ref() == Some(&identity));
                if !owned && !share {
                    self.end_session(sid);
                }
                owned || share
            }
            None => false,
        };
        // The taken-over connection's will goes out only if its session
        // ends here (expiry 0, Clean Start, another identity); a session
        // that simply continues has not lost its client (Mosquitto's rule).
        // A delayed will is cancelled by this new connection in any case
        // [MQTT-3.1.2-8].
        if let Some((will, from)) = taken_will {
            if !session_present && will.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(*will, &from);
            }
        }
        self.claim(&client_id, connect.clean_start);
        let sid = match existing.filter(|_| session_present) {
            Some(sid) => sid,
            None => {
                let sid = SessionId(self.fresh_id());
                let session = Session::new(
                    client_id.clone(),
                    self.config.limits.max_inflight,
                    &self.hasher,
                );
                self.sessions.insert(sid, Box::new(session));
                self.by_client_id.insert(client_id.clone(), sid);
                self.hosting(&client_id, true);
                sid
            }
        };

        let limits = &self.config.limits;
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if let Some(max) = limits.max_keepalive {
            if v5 && (keep_alive == 0 || keep_alive > max) {
                keep_alive = max;
                server_keep_alive = Some(max);
            }
        }
        let expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let receive_maximum = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let window = limits.max_inflight.min(receive_maximum).max(1);

        if let Some(s) = self.sessions.get_mut(&sid) {
            s.conn = Some(id);
            // Recorded with the expiry just below: a session shared across
            // identities belongs to whoever resumed it last.
            s.owner = Some(identity);
            s.expiry_interval = expiry;
            s.expires_at = None;
            s.window = window;
            // Resuming before a delayed will fires cancels it [MQTT-3.1.3-9].
            s.pending_will = None;
        }
        // Durably stored: the batch that first stored it is confirmed.
        let was_durable = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.stored && s.stored_in <= self.durable);
        self.record_expiry(sid);
        // A session stored for the first time, or resumed while the batch
        // that first stored it is not durable yet (its creator's CONNACK
        // still waited, or failed, when that connection went): CONNACK
        // promises the client a session that survives a restart, so it
        // waits for this input's batch, which records the session again and
        // follows every earlier one, and fails if that batch fails. (The
        // simulator found a resumed session's CONNACK leaving first, and a
        // crash then losing the session.)
        let connack_wait = (!was_durable && self.sessions.get(&sid).is_some_and(|s| s.stored))
            .then_some(self.last_store_id + 1);
        self.arm_session(sid);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.state = ConnState::Connected { session: sid };
        c.connack_wait = connack_wait;
        if connack_wait.is_some() {
            self.gated.push(id);
        }
        c.client_id = client_id.clone();
        c.username = connect.username.as_ref().map(MqttStr::detached);
        c.will = connect.will.map(Box::new);
        c.keep_alive_ms = u64::from(keep_alive) * 1000;
        c.client_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
        c.client_max_packet = connect
            .properties
            .maximum_packet_size
            .map_or(u32::MAX, |m| m.get());
        if v5 {
            // What the CONNACK below announces, held for this connection.
            c.promised_max_packet = self.config.limits.max_packet_size.max(1);
            c.promised_receive_max = self.config.receive_maximum;
            c.promised_alias_max = self.config.topic_alias_maximum;
        }
        c.problem_info = connect
            .properties
            .request_problem_information
            .unwrap_or(true);
        let deadline = self.conn_deadline(id);
        self.arm_conn(id, deadline);
        self.connected += 1;
        self.stats.connections_total += 1;

        let mut properties = ConnAckProperties::default();
        if v5 {
            let config = &self.config;
            properties.assigned_client_identifier = assigned;
            // [MQTT-4.12.0-5]: the CONNECT's method, on success too.
            properties.authentication_method =
                self.conns.get(&id).and_then(|c| c.auth_method().cloned());
            properties.server_keep_alive = server_keep_alive;
            properties.receive_maximum = NonZeroU16::new(config.receive_maximum);
            properties.maximum_packet_size =
                core::num::NonZeroU32::new(config.limits.max_packet_size);
            properties.topic_alias_maximum =
                (config.topic_alias_maximum > 0).then_some(config.topic_alias_maximum);
            if config.maximum_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(config.maximum_qos);
            }
            if !config.retain_available {
                properties.retain_available = Some(false);
            }
            if !config.wildcard_subscription_available {
                properties.wildcard_subscription_available = Some(false);
            }
            if !config.subscription_identifiers_available {
                properties.subscription_identifiers_available = Some(false);
            }
            if !config.shared_subscription_available {
                properties.shared_subscription_available = Some(false);
            }
        }
        let ack = ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        };
        self.send(id, &Packet::ConnAck(Box::new(ack)));
        if let Some(c) = self.conns.get_mut(&id) {
            // Where the CONNACK ends in the output stream (see
            // `Conn::connack_behind`): after what waits before it.
            let held: usize = c
                .held
                .iter()
                .map(|(_, item)| match item {
                    Held::Bytes(b) => b.len(),
                    Held::Packet(p) => p.encoded_len(c.protocol),
                })
                .sum();
            c.connack_behind = (held + c.out.len()) as u64;
        }
        self.presence("new", &client_id);
        self.event(Event::ClientConnected {
            conn: id,
            client_id,
            username: connect.username,
        });
        if session_present {
            self.resume(id, sid);
        }
    }

    /// Re-sends what was in flight, in its original order and with DUP set
    /// [MQTT-4.4.0-1], then fills the window from the queue. Every PUBLISH
    /// is authorized again (`authorize_delivery`) first; a denied one is
    /// dropped. A PUBREL carries no message and always goes.
    fn resume(&mut self, id: ConnId, sid: SessionId) {
        // What is re-sent reflects stored state that may still be on its
        // way to the store: it waits for every earlier batch.
        let needs = if self.stored_client(sid).is_some() {
            self.last_store_id
        } else {
            0
        };
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let mut order: Vec<(u64, crate::codec::PacketId)> =
            s.inflight.iter().map(|(pid, f)| (f.seq, *pid)).collect();
        order.sort_unstable();
        for (_, pid) in order {
            let Some(f) = self.sessions.get(&sid).and_then(|s| s.inflight.get(&pid)) else {
                continue;
            };
            match f.state {
                OutState::Published => {
                    let delivery = f.delivery.clone();
                    // Not yet acknowledged, so sent again: only if the
                    // policy still allows it (it may have changed, or the
                    // session been restored from a store).
                    if !self.delivery_allowed(id, &delivery.message.topic) {
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.inflight.remove(&pid);
                        }
                        self.stats.deliveries_denied += 1;
                        self.record_left(sid, &delivery);
                        continue;
                    }
                    // Too large for this connection's Maximum Packet Size:
                    // dropped as if delivered, as for a first send.
                    if !self.send_publish(id, &delivery, Some(pid), true) {
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.inflight.remove(&pid);
                        }
                        self.record_left(sid, &delivery);
                    } else {
                        self.depend(id, needs);
                    }
                }
                OutState::Released => {
                    self.send_held(id, Packet::PubRel(PubResponse::new(pid)), needs);
                }
            }
        }
        self.pump(sid);
    }

    fn assign_client_id(&mut self) -> MqttStr {
        loop {
            // splitmix64 over a counter and the configured seed: unique in
            // practice, and checked against existing sessions anyway.
            let mut z = self
                .config
                .random_seed
                .wrapping_add(self.fresh_id().wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let text = format!("roost-{z:016x}");
            if let Ok(id) = MqttStr::copy_from_str(&text) {
                if !self.by_client_id.contains_key(&id) {
                    return id;
                }
            }
        }
    }

    fn on_disconnect(&mut self, id: ConnId, sid: SessionId, d: crate::codec::Disconnect) {
        // A DISCONNECT may change the session expiry, but not from 0 to
        // more [MQTT-3.14.2-2].
        if let Some(expiry) = d.properties.session_expiry_interval {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            if s.expiry_interval == 0 && expiry != 0 {
                self.close_because(
                    id,
                    CloseReason::Protocol(ReasonCode::ProtocolError),
                    Some("DISCONNECT may not set a Session Expiry Interval when CONNECT set 0"),
                );
                return;
            }
            s.expiry_interval = expiry;
            self.record_expiry(sid);
        }
        if d.reason == ReasonCode::DisconnectWithWillMessage {
            if let Some(c) = self.conns.get_mut(&id) {
                c.graceful = true;
            }
            self.close(
                id,
                CloseReason::Protocol(ReasonCode::DisconnectWithWillMessage),
            );
            return;
        }
        // A normal DISCONNECT discards the will [MQTT-3.14.4-3].
        self.close(id, CloseReason::ClientDisconnect);
    }

    /// Forgets a connection and detaches its session: the will is published
    /// (now or after its delay) if `publish_will`, and a session with
    /// expiry 0 ends.
    pub(super) fn drop_conn(
        &mut self,
        id: ConnId,
        reason: CloseReason,
        publish_will: bool,
    ) -> Option<Conn> {
        let mut c = *self.conns.remove(&id)?;
        if let Some(at) = c.timer.take() {
            self.timers.remove(&(at, super::Timer::Conn(id)));
        }
        if c.auth_step == AuthStep::Deciding {
            self.pending_auth.retain(|_, conn| *conn != id);
        }
        // A late answer to one of its authorization requests is ignored.
        if let Some(held) = c.authorizing.take() {
            self.forget_authorization(id, &held);
        }
        let ConnState::Connected { session: sid } = c.state else {
            return Some(c);
        };
        self.connected = self.connected.saturating_sub(1);
        let will = c.will.take().filter(|_| publish_will);
        let client_id = c.client_id.clone();
        let from = WillFrom {
            client_id: client_id.clone(),
            username: c.username.clone(),
            listener: c.listener,
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.conn = None;
        }
        self.presence("disconnect", &client_id);
        self.event(Event::ClientDisconnected {
            conn: id,
            client_id,
            reason,
        });
        self.move_shared_deliveries(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Some(c);
        };
        let expiry = s.expiry_interval;
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay > 0 && expiry > 0 {
                s.pending_will = Some(Box::new(PendingWill {
                    at: self.now + Duration::from_secs(u64::from(delay)),
                    will: *will,
                    from,
                }));
            } else {
                self.publish_will(*will, &from);
            }
        }
        if expiry == 0 {
            self.end_session(sid);
        } else {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expires_at =
                    (expiry != u32::MAX).then(|| self.now + Duration::from_secs(u64::from(expiry)));
            }
            self.arm_session(sid);
        }
        Some(c)
    }

    pub(super) fn session_timer(&mut self, sid: SessionId, at: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.timer != Some(at) {
            return;
        }
        s.timer = None;
        if s.pending_will.as_ref().is_some_and(|w| w.at <= self.now) {
            if let Some(pending) = s.pending_will.take() {
                self.publish_will(pending.will, &pending.from);
            }
        }
        let expired = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.conn.is_none() && s.expires_at.is_some_and(|at| at <= self.now));
        if expired {
            self.stats.sessions_expired += 1;
            self.end_session(sid);
        } else {
            self.arm_session(sid);
        }
    }

    /// Removes a session and everything it holds. A will still waiting for
    /// its delay is published now: the session's end comes first
    /// [MQTT-3.1.2-8].
    pub(super) fn end_session(&mut self, sid: SessionId) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(at) = s.timer.take() {
            self.timers.remove(&(at, super::Timer::Session(sid)));
        }
        self.by_client_id.remove(&s.client_id);
        self.hosting(&s.client_id, false);
        if s.stored {
            self.record(StoreOp::SessionDelete {
                client_id: s.client_id.clone(),
            });
        }
        for (filter, _) in s.subscriptions.drain() {
            self.remove_subscription(sid, &filter);
        }
        if let Some(pending) = s.pending_will.take() {
            self.publish_will(pending.will, &pending.from);
        }
    }

    /// Publishes a will that is due, if the policy still allows `from` to
    /// publish on its topic: the ACL may have changed since CONNECT. A
    /// denied will is dropped and counted in [`super::Stats::wills_denied`].
    /// A policy that defers cannot be asked now (the connection is gone, and
    /// a will does not wait): the decision made at CONNECT stands.
    pub(super) fn publish_will(&mut self, will: Will, from: &WillFrom) {
        let client = ClientRef {
            client_id: &from.client_id,
            username: from.username.as_ref(),
            listener: from.listener,
        };
        let denied = will.topic.as_bytes().first() == Some(&b'$')
            || matches!(
                self.config
                    .authorization
                    .authorize_publish(client, &will.topic),
                Verdict::Decided(PublishDecision::Deny(_))
            );
        if denied {
            self.stats.wills_denied += 1;
            return;
        }
        let message = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: crate::codec::PublishProperties {
                payload_format_indicator: will.properties.payload_format_indicator,
                message_expiry_interval: will.properties.message_expiry_interval,
                content_type: will.properties.content_type,
                response_topic: will.properties.response_topic,
                correlation_data: will.properties.correlation_data,
                user_properties: will.properties.user_properties,
                ..Default::default()
            },
        };
        self.forward(&message, Some(&from.client_id), from.username.as_ref());
        self.route_message(message, None);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Broker {
    /// Session `sid`'s client identifier connects again (here or on
    /// another node): its connection, if any, is closed as taken over
    /// [MQTT-3.1.4-3] and its will handed back, for the caller to publish
    /// or drop once it knows whether the session continues. A delayed will
    /// already pending is cancelled whatever Clean Start says
    /// [MQTT-3.1.2-8], so ending the old session must not release it.
    pub(super) fn take_over(&mut self, sid: SessionId) -> Option<(Box<Will>, WillFrom)> {
        let mut taken_will = None;
        if let Some(old) = self.sessions.get(&sid).and_then(|s| s.conn) {
            taken_will = self.conns.get_mut(&old).and_then(|c| {
                let from = WillFrom {
                    client_id: c.client_id.clone(),
                    username: c.username.clone(),
                    listener: c.listener,
                };
                c.will.take().map(|w| (w, from))
            });
            self.close(old, CloseReason::SessionTakenOver);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.pending_will = None;
        }
        taken_will
    }
}
