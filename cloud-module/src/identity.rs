//! How twinflash-cloud names itself to the Kubernetes API server (issue 22, F3): a `User-Agent` on every request
//! and a `fieldManager` on every write. Without them the API server records the writes under the manager `unknown`,
//! audit logs cannot tell the replicas apart, and an operator's `kubectl apply --server-side` fails with
//! `conflict with "unknown"` (docs/operations.md section 10 says which fields each manager owns).
//!
//! Managers: [`crate::controller::MANAGER`] (`twinflash-cloud`) for the Device controller's writes (record
//! annotations, mode dmi's pin and nudge, mode direct's status, its Events), [`crate::rollout::ROLLOUT_MANAGER`]
//! (`twinflash-rollout`) for the rollout controller's (Devices' desired values, the rollout's status, its Events).
//! kube-lease-manager names its own Lease patches (`kube-lease-manager-<identity>`); its Lease create carries none,
//! and the API server then takes the manager from the User-Agent: `twinflash-cloud`.

use http::HeaderValue;
use http::header::USER_AGENT;
use kube::api::{PatchParams, PostParams};

/// The product token of the controller's User-Agent.
pub const PRODUCT: &str = "twinflash-cloud";

/// `twinflash-cloud/<version> (<identity>)`: the product and version, and the replica (pod name) as a comment, so
/// the API server's audit log tells the replicas apart; the API server names a manager from the product alone.
/// A character a header cannot carry is replaced by `_`.
pub fn user_agent(identity: &str) -> HeaderValue {
    let identity: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let text = format!("{PRODUCT}/{} ({identity})", env!("CARGO_PKG_VERSION"));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(PRODUCT))
}

/// `config` sending [`user_agent`] on every request (a User-Agent already in `config.headers` is replaced).
pub fn with_user_agent(mut config: kube::Config, identity: &str) -> kube::Config {
    config.headers.retain(|(name, _)| name != USER_AGENT);
    config.headers.push((USER_AGENT, user_agent(identity)));
    config
}

/// Patch parameters naming `manager` (the `fieldManager` query parameter, on merge and JSON patches alike).
pub fn patch_params(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    }
}

/// Create parameters naming `manager`.
pub fn post_params(manager: &str) -> PostParams {
    PostParams {
        field_manager: Some(manager.to_owned()),
        ..PostParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_agent_names_product_version_and_replica() {
        let ua = user_agent("twinflash-cloud-5d9f-x");
        assert_eq!(
            ua.to_str().ok(),
            Some(
                format!(
                    "twinflash-cloud/{} (twinflash-cloud-5d9f-x)",
                    env!("CARGO_PKG_VERSION")
                )
                .as_str()
            )
        );
        let odd = user_agent("a b(c)\u{e9}");
        assert!(
            odd.to_str().is_ok_and(|s| s.ends_with("(a_b_c__)")),
            "{odd:?}"
        );
        let cfg = kube::Config::new("http://127.0.0.1:1".parse().unwrap_or_default());
        let cfg = with_user_agent(with_user_agent(cfg, "a"), "b");
        let uas: Vec<_> = cfg
            .headers
            .iter()
            .filter(|(n, _)| n == USER_AGENT)
            .collect();
        assert_eq!(uas.len(), 1);
        assert!(patch_params("m").field_manager.is_some_and(|m| m == "m"));
        assert!(post_params("m").field_manager.is_some_and(|m| m == "m"));
    }
}
