//! The live policy handle: the one place a running process keeps the [`Policy`] in force.
//!
//! Owns only the type. The reloader stores into it; the ext_authz service, the shadow
//! evaluator and the admin listener load from it. Readers take one `arc-swap` guard per check
//! and must never hold it across an `.await`.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::Policy;

/// The live policy, swapped atomically on reload. `None` until a bundle is in force.
pub type PolicyHandle = Arc<ArcSwapOption<Policy>>;
