//! Extension points for embedding programs, the same on every runtime:
//! asynchronous authentication and authorization hooks and an inline
//! policy. The futures are executor-agnostic (`Send`, boxed), so one set of
//! hooks works on tokio and on smol; `roost-mio` offers the same decisions
//! as a poll-driven API instead.

use roost_core::broker::{
    AccessPolicy, AuthDecision, AuthRequest, AuthorizeDecision, AuthorizeRequest,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An authentication hook: decides a CONNECT, as late as it likes.
pub type Authenticator =
    Arc<dyn Fn(AuthRequest) -> Pin<Box<dyn Future<Output = AuthDecision> + Send>> + Send + Sync>;

/// An authorization hook: decides a publish or subscribe the policy
/// deferred, as late as it likes (within `limits.authorize_timeout`, 10 s by
/// default, after which the client's connection is closed). Answer an
/// [`roost_core::broker::Operation::Publish`] with a
/// [`roost_core::broker::PublishDecision`] and an
/// [`roost_core::broker::Operation::Subscribe`] with a
/// [`roost_core::broker::SubscribeDecision`], each `.into()` an
/// [`AuthorizeDecision`].
pub type Authorizer = Arc<
    dyn Fn(AuthorizeRequest) -> Pin<Box<dyn Future<Output = AuthorizeDecision> + Send>>
        + Send
        + Sync,
>;

/// Extension points for embedding programs.
#[derive(Default)]
pub struct Hooks {
    /// Decides every CONNECT (replacing the password files).
    pub authenticate: Option<Authenticator>,
    /// Decides every publish, subscribe and delivery inline (replacing the
    /// ACLs). It may defer publish and subscribe decisions
    /// ([`roost_core::broker::Verdict::Defer`]) to [`Hooks::authorize`];
    /// without that hook, a deferred decision is refused.
    pub policy: Option<Box<dyn AccessPolicy>>,
    /// Decides publishes and subscribes asynchronously (an ACL in a
    /// database, say). Alone, it is asked about every PUBLISH and SUBSCRIBE
    /// (replacing the ACLs); with [`Hooks::policy`], about those the policy
    /// defers. While a decision is pending, that client's later packets
    /// wait, in order; other clients are not held up. Deliveries are
    /// always decided inline, by the policy.
    pub authorize: Option<Authorizer>,
}
