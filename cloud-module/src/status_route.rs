//! Where a `status.twins` patch goes. KubeEdge's Device CRD declares no status subresource
//! (`build/crds/devices/devices_v1beta1_device.yaml`), and cloudcore writes reported values with a
//! merge patch of `devices/<name>` itself, so `PATCH .../devices/<name>/status` is a 404 there. A
//! CRD that does declare the subresource silently drops `.status` from a main-resource patch. Not
//! knowing which one a cluster serves (the DeviceStatus CRD of KubeEdge 1.23 is not published in a
//! form we could check), the route patches the main resource, checks that the answer carries the
//! twins, and otherwise patches `/status` and keeps to it from then on.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU8, Ordering};

use kube::Api;
use kube::api::Patch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::Twin;

/// What is known about the status subresource of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not known yet: try the main resource first.
    Unknown,
    /// No status subresource: status is part of the main resource.
    Main,
    /// A status subresource: status only changes through `/status`.
    Subresource,
}

/// The route learnt for one resource type, shared by every writer of it.
#[derive(Debug, Default)]
pub struct StatusRoute(AtomicU8);

impl StatusRoute {
    /// A route that is already known (tests, or a configuration that says so).
    pub fn known(route: Route) -> StatusRoute {
        let r = StatusRoute::default();
        r.set(route);
        r
    }

    /// The route as known now.
    pub fn get(&self) -> Route {
        match self.0.load(Ordering::Relaxed) {
            1 => Route::Main,
            2 => Route::Subresource,
            _ => Route::Unknown,
        }
    }

    fn set(&self, route: Route) {
        let v = match route {
            Route::Unknown => 0,
            Route::Main => 1,
            Route::Subresource => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// Merge-patches `patch` (which carries `status.twins`, and may carry
    /// `metadata.resourceVersion`) into object `name`, on the route that makes it stick.
    pub async fn patch<K>(&self, api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
    where
        K: Clone + DeserializeOwned + Serialize + Debug,
    {
        let params = crate::identity::patch_params(crate::controller::MANAGER);
        if self.get() != Route::Subresource {
            let answer = api.patch(name, &params, &Patch::Merge(patch)).await?;
            if self.get() == Route::Main || carries(&answer, patch) {
                self.set(Route::Main);
                return Ok(answer);
            }
            tracing::info!(
                object = name,
                "status is a subresource here: status patches go to /status from now on"
            );
        }
        let answer = api
            .patch_status(name, &params, &Patch::Merge(patch))
            .await?;
        self.set(Route::Subresource);
        Ok(answer)
    }
}

/// True when `answer` holds the `status.twins` that `patch` wrote (compared as typed twins, so
/// defaults filled in on either side do not count as a difference).
fn carries<K: Serialize>(answer: &K, patch: &Value) -> bool {
    let twins = |v: &Value| serde_json::from_value::<Vec<Twin>>(v["status"]["twins"].clone()).ok();
    match (serde_json::to_value(answer).ok(), twins(patch)) {
        (Some(answer), Some(wanted)) => twins(&answer) == Some(wanted),
        _ => false,
    }
}

#[cfg(test)]
#[path = "status_route_tests.rs"]
mod tests;
