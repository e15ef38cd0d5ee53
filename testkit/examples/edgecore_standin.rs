//! Runs the edgecore stand-in of twinflash-testkit against a broker, for the demo (KubeEdge cannot be installed
//! here). A TEST STAND-IN, not edgecore: see docs/kubeedge.md section 9 for what it models and what it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: a panic is a clear failure

use std::time::Duration;

use twinflash_testkit::{Direction, Edgecore, EdgecoreOptions};

const HELP: &str = "edgecore_standin: a TEST STAND-IN for KubeEdge's edgecore v1.23.1 (MQTT side only), for the demo and tests,
because KubeEdge cannot be installed here. It is not edgecore: see docs/kubeedge.md section 9.

Usage: edgecore_standin --mqtt-port <PORT> --store <FILE> [--device <ns/name>]... [--reconnect-secs <SECS>]

  --mqtt-port <PORT>       the broker on 127.0.0.1
  --store <FILE>           the twin store (JSON; reloaded at start, written on every change)
  --device <ns/name>       a known device (repeat); unknown devices get 404, as on edgecore
  --reconnect-secs <SECS>  wait after a broker connection error (default 5, as edgecore)
  -h, --help               this text

Logs one line per message it receives, sends or syncs to stderr; exits on SIGTERM or Ctrl-C.";

fn main() {
    let mut port = None;
    let mut store = None;
    let mut devices = Vec::new();
    let mut reconnect = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("edgecore_standin: {a} needs a value\n\n{HELP}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return;
            }
            "--mqtt-port" => port = value().parse::<u16>().ok(),
            "--store" => store = Some(value()),
            "--device" => devices.push(value()),
            "--reconnect-secs" => reconnect = value().parse().unwrap_or(5),
            other => {
                eprintln!("edgecore_standin: unknown argument {other:?}\n\n{HELP}");
                std::process::exit(2);
            }
        }
    }
    let (Some(port), Some(store)) = (port, store) else {
        eprintln!("edgecore_standin: --mqtt-port and --store are required\n\n{HELP}");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(async move {
        let mut opts = EdgecoreOptions::new(port, store);
        opts.reconnect = Duration::from_secs(reconnect);
        let ec = Edgecore::spawn(opts);
        for d in &devices {
            if ec.twin(d).is_none() {
                ec.add_device(d, &[]);
            }
        }
        eprintln!("edgecore stand-in (a test stand-in, not KubeEdge): broker 127.0.0.1:{port}, devices {devices:?}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        let mut printed = 0;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let log = ec.log();
            for l in log.iter().skip(printed) {
                let dir = match l.direction {
                    Direction::Received => "<-",
                    Direction::Sent => "->",
                    Direction::Synced => "=> cloud",
                    Direction::DroppedSync => "x> cloud (link down, dropped)",
                };
                eprintln!("edgecore {dir} {} {}", l.topic, String::from_utf8_lossy(&l.payload));
            }
            printed = log.len();
        }
        ec.stop();
        eprintln!("edgecore stand-in: stopped {:?}", ec.counters());
    });
}
