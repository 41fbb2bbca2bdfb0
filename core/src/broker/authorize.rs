//! Authorization decided by the embedding program: a PUBLISH or SUBSCRIBE
//! the [`super::AccessPolicy`] deferred is held, with the connection's input
//! paused behind it, until every request it raised is answered through
//! [`Broker::resolve_authorize`] or its deadline passes.

use super::state::{Authorizing, FilterSlot, HeldPacket};
use super::{
    Action, AuthorizeDecision, AuthorizeRequest, AuthorizeToken, Broker, CloseReason, ConnId,
    Instant, Operation, PublishDecision, SubscribeDecision, Timer,
};
use crate::codec::{QoS, ReasonCode};
use alloc::boxed::Box;

impl Broker {
    /// A request about `what` for connection `id`, registered under a fresh
    /// token; `slot` is the filter's position in a SUBSCRIBE (0 for a
    /// PUBLISH). `None` if the connection is gone.
    pub(super) fn authorize_request(
        &mut self,
        id: ConnId,
        slot: usize,
        what: Operation,
    ) -> Option<AuthorizeRequest> {
        let token = AuthorizeToken(self.fresh_id());
        let c = self.conns.get(&id)?;
        self.pending_authorize.insert(token, (id, slot));
        Some(AuthorizeRequest {
            token,
            conn: id,
            client_id: c.client_id.clone(),
            username: c.username.clone(),
            listener: c.listener,
            what,
        })
    }

    /// Holds `packet` on `id` until its requests are answered, pausing the
    /// connection's input, and arms the authorization deadline.
    pub(super) fn hold_for_authorization(&mut self, id: ConnId, packet: HeldPacket) {
        let deadline = self.now + self.config.limits.authorize_timeout;
        if let Some(c) = self.conns.get_mut(&id) {
            c.authorizing = Some(Box::new(Authorizing { deadline, packet }));
            self.timers.insert((deadline, Timer::Authorize(id)));
        }
    }

    /// Forgets the requests and deadline of a held packet whose connection
    /// ended.
    pub(super) fn forget_authorization(&mut self, id: ConnId, held: &Authorizing) {
        self.timers.remove(&(held.deadline, Timer::Authorize(id)));
        match &held.packet {
            HeldPacket::Publish { token, .. } | HeldPacket::Will { token, .. } => {
                self.pending_authorize.remove(token);
            }
            HeldPacket::Session { .. } => {}
            HeldPacket::Subscribe { slots, .. } => {
                for slot in slots {
                    if let FilterSlot::Waiting(token) = slot {
                        self.pending_authorize.remove(token);
                    }
                }
            }
        }
    }

    /// Answers an [`Action::Authorize`] request: a [`PublishDecision`] for a
    /// publish, a [`SubscribeDecision`] for a subscribe (an answer of the
    /// other kind refuses with 0x80 Unspecified error). A token that is
    /// unknown (answered already, or its connection closed or timed out) is
    /// ignored.
    ///
    /// A publish is then routed (if allowed) and acknowledged as if it had
    /// been decided inline; a SUBSCRIBE is answered once all its deferred
    /// filters are decided, with one SUBACK in filter order. Then the
    /// packets the connection sent meanwhile are read, in order, and may
    /// raise requests of their own.
    pub fn resolve_authorize(
        &mut self,
        now: Instant,
        token: AuthorizeToken,
        decision: impl Into<AuthorizeDecision>,
    ) {
        self.advance(now);
        let decision = decision.into();
        let Some((id, index)) = self.pending_authorize.remove(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(held) = c.authorizing.as_mut() else {
            return;
        };
        let complete = match &mut held.packet {
            HeldPacket::Publish { token: t, .. } | HeldPacket::Will { token: t, .. } => *t == token,
            HeldPacket::Session { .. } => false,
            HeldPacket::Subscribe { slots, waiting, .. } => match slots.get_mut(index) {
                Some(slot) if matches!(*slot, FilterSlot::Waiting(t) if t == token) => {
                    *slot = FilterSlot::Decided(subscribe_result(decision));
                    *waiting = waiting.saturating_sub(1);
                    *waiting == 0
                }
                _ => false,
            },
        };
        if !complete {
            return;
        }
        let session = c.session();
        let Some(held) = c.authorizing.take() else {
            return;
        };
        self.timers.remove(&(held.deadline, Timer::Authorize(id)));
        if let HeldPacket::Will {
            connect,
            client_id,
            assigned,
            ..
        } = held.packet
        {
            // Any answer but an allowed publish refuses: the will may not be
            // published, so the CONNECT that carries it may not succeed.
            if decision == AuthorizeDecision::Publish(PublishDecision::Allow) {
                self.admit(id, connect, client_id, assigned);
                self.process_input(id);
            } else {
                self.refuse(id, ReasonCode::NotAuthorized);
            }
            self.flush();
            return;
        }
        let Some(sid) = session else {
            return;
        };
        match held.packet {
            HeldPacket::Publish { publish, .. } => {
                let reason = match decision {
                    AuthorizeDecision::Publish(PublishDecision::Allow) => ReasonCode::Success,
                    AuthorizeDecision::Publish(PublishDecision::Deny(code)) => denial(code),
                    AuthorizeDecision::Subscribe(_) => ReasonCode::UnspecifiedError,
                };
                self.finish_publish(id, sid, publish, reason);
            }
            HeldPacket::Subscribe {
                subscribe, slots, ..
            } => {
                let results = slots
                    .into_iter()
                    .map(|slot| match slot {
                        FilterSlot::Decided(result) => result,
                        // Unreachable: none is waiting any more.
                        FilterSlot::Waiting(_) => Err(ReasonCode::UnspecifiedError),
                    })
                    .collect();
                self.finish_subscribe(id, sid, subscribe, results);
            }
            // Handled above, or not an authorization.
            HeldPacket::Will { .. } | HeldPacket::Session { .. } => {}
        }
        // What the client sent while it waited.
        self.process_input(id);
        // Its timer was put off while input was paused (see `conn_timer`):
        // bring it back to the real deadline.
        if self.conns.get(&id).is_some_and(|c| c.authorizing.is_none()) {
            let at = self.conn_deadline(id);
            self.arm_conn(id, at);
        }
        self.flush();
    }

    /// The authorization deadline of `id` passed: close it (a session
    /// fetched from the cluster that did not come: go on without it).
    pub(super) fn authorize_timer(&mut self, id: ConnId, at: Instant) {
        let held = self
            .conns
            .get(&id)
            .and_then(|c| c.authorizing.as_ref())
            .filter(|held| held.deadline == at);
        if let Some(HeldPacket::Session { token, .. }) = held.map(|h| &h.packet) {
            let token = *token;
            self.finish_fetch(token, None);
        } else if held.is_some() {
            self.close(id, CloseReason::AuthorizeTimeout);
        }
    }

    /// Queues the requests of a packet just held.
    pub(super) fn emit_authorize(&mut self, request: AuthorizeRequest) {
        self.actions.push_back(Action::Authorize(request));
    }
}

/// A denial's reason code: a code that is not a failure would tell the
/// client it succeeded, so it becomes 0x87 Not authorized.
pub(super) fn denial(code: ReasonCode) -> ReasonCode {
    if code.is_error() {
        code
    } else {
        ReasonCode::NotAuthorized
    }
}

/// A subscribe decision as the QoS to grant or the SUBACK failure.
pub(super) fn subscribe_decision(d: SubscribeDecision) -> Result<QoS, ReasonCode> {
    match d {
        SubscribeDecision::Grant(qos) => Ok(qos),
        SubscribeDecision::Deny(code) => Err(denial(code)),
    }
}

fn subscribe_result(d: AuthorizeDecision) -> Result<QoS, ReasonCode> {
    match d {
        AuthorizeDecision::Subscribe(d) => subscribe_decision(d),
        AuthorizeDecision::Publish(_) => Err(ReasonCode::UnspecifiedError),
    }
}
