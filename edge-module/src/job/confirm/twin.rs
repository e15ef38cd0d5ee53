//! The `twin` check (MQTT mode): the device's own application reports its running version in a twin property that
//! the config names; the agent asks edgecore for the stored twin (`twin/get`) and confirms once that property holds
//! the flashed version. Anything else is "not yet": the property may still hold the previous version until the
//! application has started and reported.

use std::time::Duration;

use super::Once;
use crate::device::Device;
use crate::report::ReportQueue;

/// Asks for the twin and waits up to `left` for edgecore's answer; judges the property's value.
pub(super) async fn run(
    device: &Device,
    reports: &ReportQueue,
    property: &str,
    expected: &str,
    left: Duration,
) -> Once {
    let mut answers = device.app_reports();
    answers.borrow_and_update();
    reports.want_get(device.id());
    match tokio::time::timeout(left, answers.changed()).await {
        Err(_) => Once::NotYet("edgecore did not answer the twin/get".into()),
        Ok(Err(_)) => Once::NotYet("the device is gone".into()),
        Ok(Ok(())) => judge(answers.borrow().as_deref(), property, expected),
    }
}

/// The verdict on what edgecore's twin holds in `property`: the flashed version (as sent, or as a twin value
/// writes it) confirms.
fn judge(value: Option<&str>, property: &str, expected: &str) -> Once {
    match value {
        Some(v) if v == expected || v == mqtt_schema::version_to_twin(expected) => Once::Confirmed,
        Some(v) => Once::NotYet(format!("the application reports {property} = {v:?}")),
        None => Once::NotYet(format!("edgecore's twin has no reported {property}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_version_confirms_as_sent_or_as_a_twin_value() {
        assert!(matches!(
            judge(Some("2.0.0"), "app-version", "2.0.0"),
            Once::Confirmed
        ));
        assert!(matches!(
            judge(Some("2.0.0_b7"), "app-version", "2.0.0+b7"),
            Once::Confirmed
        ));
        assert!(matches!(
            judge(Some("1.0.0"), "app-version", "2.0.0"),
            Once::NotYet(_)
        ));
        assert!(matches!(
            judge(None, "app-version", "2.0.0"),
            Once::NotYet(_)
        ));
    }
}
