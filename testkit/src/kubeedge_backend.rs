//! What the two KubeEdge facades ([`crate::DmiKubeEdge`], [`crate::MqttKubeEdge`]) share: KubeEdge is either the
//! stand-ins `S` or the real components, and the few facts that follow from which.
use crate::real::RealKubeEdge;

/// The edge node of the stand-ins.
pub const STANDIN_NODE: &str = "node-a";

/// Stand-ins `S`, or real KubeEdge.
pub(crate) enum Backend<S> {
    StandIn(S),
    Real(Box<RealKubeEdge>),
}

impl<S> Backend<S> {
    /// The real components (real mode only).
    pub(crate) fn real(&self) -> Option<&RealKubeEdge> {
        match self {
            Backend::StandIn(_) => None,
            Backend::Real(r) => Some(r),
        }
    }

    /// The stand-ins (stand-in mode only).
    pub(crate) fn standin(&self) -> Option<&S> {
        match self {
            Backend::StandIn(s) => Some(s),
            Backend::Real(_) => None,
        }
    }
}

/// Which KubeEdge a facade ([`crate::DmiKubeEdge`], [`crate::MqttKubeEdge`]) runs against, and what follows from it.
pub trait KubeEdgeMode {
    /// The real components (real mode only).
    fn real(&self) -> Option<&RealKubeEdge>;

    /// Whether this is the real KubeEdge.
    fn is_real(&self) -> bool {
        self.real().is_some()
    }

    /// `"real"` or `"stand-in"`, for a scenario's report line.
    fn mode(&self) -> &'static str {
        if self.is_real() { "real" } else { "stand-in" }
    }

    /// The edge node every Device names.
    fn node(&self) -> &str {
        self.real().map_or(STANDIN_NODE, RealKubeEdge::node)
    }

    /// The prefix of the scenario's Device names: `sim` with the stand-ins, a name unique to the run in real mode
    /// (the cluster outlives the test).
    fn device_prefix(&self) -> String {
        self.real()
            .map_or_else(|| "sim".to_owned(), |r| r.run_id().to_owned())
    }
}

/// `<namespace>/<name>` split (namespace `default` when there is none).
pub(crate) fn split_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or(("default", id))
}
