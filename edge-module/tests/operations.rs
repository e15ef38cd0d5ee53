//! Operating the agent: TLS with client certificates (broker and registry) and passwords, the legacy topic layout, graceful shutdown,
//! metrics and health endpoints, configuration checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use mqtt_schema::TopicLayout;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use support::{Agent, AgentSpec, Cloud, Env, image, init, push};
use twinflash_harness::{
    Mosquitto, MosquittoOptions, Registry, RegistryOptions, RegistryTls, free_port, make_certs,
};

const T: Duration = Duration::from_secs(30);

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_a_password_carry_the_whole_exchange() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path()).unwrap();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        tls: Some(certs.server_files()),
        require_client_cert: true,
        users: vec![
            ("edge".into(), "s3cret".into()),
            ("cloud".into(), "c10ud".into()),
        ],
        ..MosquittoOptions::default()
    })
    .unwrap();
    // The registry wants client certificates too: push over plain TLS, then require them.
    let https = |client_cas: Vec<std::path::PathBuf>| RegistryOptions {
        tls: Some(RegistryTls {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            client_cas,
        }),
        ..RegistryOptions::default()
    };
    let mut registry = Registry::start_with(https(Vec::new())).unwrap();
    let fw = image(30, 6_000);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &fw).unwrap();
    let tls = twinflash_artifact::TlsOptions {
        ca_file: Some(certs.ca.clone()),
        ..Default::default()
    };
    let req = twinflash_artifact::PushRequest {
        reference: format!("{}/fw/a:1.0.0", registry.host()),
        file,
        version: "1.0.0".into(),
        chip: support::CHIP.into(),
        format: None,
        base_address: Some(support::ORIGIN),
        annotations: Default::default(),
    };
    let reference = twinflash_artifact::push(&tls, &Default::default(), &req, |_, _| {})
        .await
        .unwrap()
        .pinned_reference;
    registry
        .restart_with(https(vec![certs.ca.clone()]))
        .unwrap();

    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let mut opts = MqttOptions::new("cloud", "127.0.0.1", mqtt.port());
    opts.set_credentials("cloud", "c10ud");
    opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: read(&certs.ca),
        alpn: None,
        client_auth: Some((read(&certs.client_cert), read(&certs.client_key))),
    }));
    let cloud = Cloud::connect_with(opts, TopicLayout::Namespaced).await;
    let agent = Agent::start(AgentSpec {
        mqtt_scheme: "mqtts",
        mqtt_extra: format!(
            "username = \"edge\"\npassword = \"s3cret\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
        registry_extra: format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
        ..AgentSpec::new(dir.path(), mqtt.port(), Vec::new(), 1)
    });
    let id = agent.devices[0].id.clone();
    cloud
        .wait_for(&id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&id, &reference, None).await;
    cloud
        .wait_for(&id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(agent.devices[0].holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_topic_layout_works_end_to_end() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(31, 6_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect_with(
        MqttOptions::new("cloud", "127.0.0.1", mqtt.port()),
        TopicLayout::Legacy,
    )
    .await;
    let agent = Agent::start(AgentSpec {
        legacy: true,
        mqtt_extra: "topic_layout = \"legacy\"\n".into(),
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let id = agent.devices[0].id.clone();
    assert_eq!(id, "sim-00");
    cloud
        .wait_for(&id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&id, &reference, None).await;
    cloud
        .wait_for(&id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(agent.devices[0].holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_never_cuts_a_flash_short_and_metrics_tell_the_state() {
    let port = free_port();
    let mut env = Env::start(1, |s| AgentSpec {
        write_bytes_per_sec: Some(40_000), // 60 kB: about 1.5 s of flashing
        extra_sections: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..s
    })
    .await;
    let reference = env.push("a:1.0.0", &image(32, 60_000), "1.0.0").await;
    let dev = env.device(0);
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200);
    env.intent(0, &reference).await;
    env.wait_state_prefix(0, "flashing:").await;
    let status = env.agent.terminate();
    assert!(
        status.success(),
        "graceful exit: {status:?}\n{}",
        env.agent.log()
    );
    assert_eq!(
        dev.completed(&reference),
        1,
        "the flash ran to its end before the exit"
    );

    env.agent.spawn();
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(dev.started(&reference), 1, "nothing was flashed twice");
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "twinflash_edge_jobs{state=\"installed\"} 1",
        "twinflash_edge_broker_connected 1",
        "twinflash_edge_outbox_depth",
        "twinflash_edge_fetched_bytes_total",
    ] {
        assert!(body.contains(line), "no {line} in\n{body}");
    }
}

#[test]
fn check_config_names_the_key_and_reads_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "node = \"n\"\nstate_dir = \"{0}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"c\"\n\
         [[devices]]\nid = \"default/d\"\nchip = \"STM32F411RETx\"\n[devices.flasher]\nkind = \"simulated\"\ndir = \"{0}/d\"\nsize = 65536\n",
        dir.path().display()
    );
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, &good).unwrap();
    let run = |envs: &[(&str, &str)]| support::check_config(&file, envs);
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("config ok"), "{out}");

    let (code, out) = run(&[("TWINFLASH_EDGE__MQTT__URL", "http://127.0.0.1:1883")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("mqtt.url"),
        "the override was read and the key named: {out}"
    );

    std::fs::write(
        &file,
        good.replace("client_id = \"c\"", "client_id = \"c\"\nkeepalive = 5"),
    )
    .unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("keepalive"), "{out}");
    assert_eq!(out.lines().count(), 1, "one clear line: {out}");
}
