//! The MQTT core both observers share (connect, subscribe again at every CONNACK, hand SUBACKs and PUBLISHes to a
//! handler, retry after errors), and [`Observer`], which records every message on its filters.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};

use crate::WAIT;

/// What the core hands an observer's handler.
pub(crate) enum Incoming {
    /// A SUBACK: the observer is subscribed (again, after a reconnect).
    SubAck,
    Publish(Publish),
}

/// Connects with `opts` (keep-alive 5 s, packets up to 1 MiB) and runs the event loop in a task: at each CONNACK
/// it subscribes to `filters`; SUBACKs and PUBLISHes go to `on`, with the client to answer through.
pub(crate) fn watch(
    mut opts: MqttOptions,
    filters: Vec<String>,
    mut on: impl FnMut(&AsyncClient, Incoming) + Send + 'static,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = twinflash_mqtt::client(opts);
    let c = client.clone();
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = c.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => on(&c, Incoming::SubAck),
                Ok(Event::Incoming(Packet::Publish(p))) => on(&c, Incoming::Publish(p)),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, task)
}

/// A message as observed: topic, payload, retain flag.
pub type Message = (String, Vec<u8>, bool);

/// Every message seen on the subscribed filters, in arrival order.
#[derive(Clone, Default)]
pub struct Observer {
    pub seen: Arc<Mutex<Vec<Message>>>,
    pub client: Option<AsyncClient>,
}

impl Observer {
    /// Connects to the broker at `port` and subscribes to `filters` (again after reconnects); returns once the
    /// first subscription is acknowledged.
    pub async fn start(port: u16, id: &str, filters: &[&str]) -> Observer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (seen.clone(), subscribed.clone());
        let filters = filters.iter().map(|f| (*f).to_owned()).collect();
        let opts = MqttOptions::new(id, "127.0.0.1", port);
        let (client, _task) = watch(opts, filters, move |_, incoming| match incoming {
            Incoming::SubAck => n.notify_one(),
            Incoming::Publish(p) => {
                s.lock()
                    .unwrap()
                    .push((p.topic.clone(), p.payload.to_vec(), p.retain));
            }
        });
        tokio::time::timeout(WAIT, subscribed.notified())
            .await
            .expect("observer subscribed");
        Observer {
            seen,
            client: Some(client),
        }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }
}
