//! Real mosquitto: start, connect, persistent sessions across restarts, stop and drop.
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use support::MiniMqtt;
use twinflash_harness::{Mosquitto, MosquittoOptions};

#[test]
fn starts_on_a_free_port_and_accepts_mqtt_connections() {
    let broker = Mosquitto::start().unwrap();
    assert!(broker.is_running());
    assert_ne!(broker.port(), 0);
    assert_eq!(
        broker.addr().to_string(),
        format!("127.0.0.1:{}", broker.port())
    );
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    assert!(broker.pid() > 0);
    let (client, session_present) = MiniMqtt::connect(broker.addr(), "probe", true);
    assert!(!session_present);
    client.disconnect();
    assert!(broker.log().contains(" running"), "log: {}", broker.log());
}

/// Leaves a persistent session for `sub` subscribed to `topic` with one queued QoS 1 message.
fn queue_one_message(broker: &Mosquitto, sub: &str, topic: &str, payload: &[u8]) {
    let (mut client, _) = MiniMqtt::connect(broker.addr(), sub, false);
    client.subscribe(topic, 1);
    client.disconnect();
    let (mut publisher, _) = MiniMqtt::connect(broker.addr(), "publisher", true);
    publisher.publish_qos1(topic, payload);
    publisher.disconnect();
}

#[test]
fn restart_keeping_sessions_delivers_the_queued_qos1_message() {
    let mut broker = Mosquitto::start().unwrap();
    let port = broker.port();
    let old_pid = broker.pid();
    queue_one_message(&broker, "keeper", "tf/keep", b"survives");

    broker.restart(true).unwrap();
    assert_eq!(broker.port(), port);
    assert_ne!(broker.pid(), old_pid);
    let (mut client, session_present) = MiniMqtt::connect(broker.addr(), "keeper", false);
    assert!(session_present, "log:\n{}", broker.log());
    let publish = client.next_publish(Duration::from_secs(5)).unwrap();
    assert_eq!(publish.topic, "tf/keep");
    assert_eq!(publish.qos, 1);
    assert_eq!(publish.payload, b"survives");
}

#[test]
fn restart_losing_sessions_gives_a_clean_start() {
    let mut broker = Mosquitto::start().unwrap();
    queue_one_message(&broker, "loser", "tf/lose", b"gone");

    broker.restart(false).unwrap();
    let (mut client, session_present) = MiniMqtt::connect(broker.addr(), "loser", false);
    assert!(!session_present);
    assert!(client.next_publish(Duration::from_millis(500)).is_err());
}

#[test]
fn without_persistence_a_graceful_restart_still_loses_sessions() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: false,
        ..MosquittoOptions::default()
    })
    .unwrap();
    queue_one_message(&broker, "volatile", "tf/vol", b"gone");
    broker.restart(true).unwrap();
    let (_client, session_present) = MiniMqtt::connect(broker.addr(), "volatile", false);
    assert!(!session_present);
}

#[test]
fn stop_kills_and_restart_brings_it_back_on_the_same_port() {
    let mut broker = Mosquitto::start().unwrap();
    broker.stop();
    assert!(!broker.is_running());
    assert!(TcpStream::connect(broker.addr()).is_err());
    broker.restart(true).unwrap();
    assert!(broker.is_running());
    let (client, _) = MiniMqtt::connect(broker.addr(), "back", true);
    client.disconnect();
}

#[test]
fn drop_kills_the_process_and_removes_the_temp_dir() {
    let broker = Mosquitto::start().unwrap();
    let pid = broker.pid();
    let dir = broker.dir().to_path_buf();
    let addr = broker.addr();
    assert!(dir.join("mosquitto.conf").is_file());
    drop(broker);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_broker_started_on_a_short_lived_thread_outlives_that_thread() {
    // PR_SET_PDEATHSIG fires when the forking thread exits; the harness forks from a long-lived
    // thread so this must not kill the broker.
    let broker = std::thread::spawn(|| Mosquitto::start().unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(broker.is_running());
    let (client, _) = MiniMqtt::connect(broker.addr(), "after-thread", true);
    client.disconnect();
}

#[test]
fn restart_on_a_port_taken_meanwhile_reports_port_and_log() {
    let mut broker = Mosquitto::start().unwrap();
    broker.stop();
    let _squatter = TcpListener::bind(broker.addr()).unwrap();
    let err = broker.restart(true).unwrap_err();
    assert!(err.is_port_taken(), "{err}");
    assert!(
        err.to_string().contains(&broker.port().to_string()),
        "{err}"
    );
    assert_eq!(err.code(), mqtt_schema::ErrorCode::BrokerUnreachable);
    assert!(!broker.is_running());
}
