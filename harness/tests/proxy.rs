//! The fault proxy in every mode, against a small local TCP server that sends known bytes.
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use twinflash_harness::{Fault, FaultProxy, free_port};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// A server that, on each connection, sends `n` pattern bytes, half-closes if `close` (else keeps
/// the connection open), then reads until EOF.
fn server(n: usize, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let _ = stream.write_all(&pattern(n));
                if close {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Everything until EOF; a reset counts as EOF (the proxy cut the connection).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read failed after {} bytes: {e}", out.len()),
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pass_forwards_all_bytes_both_ways_and_counts_them() {
    let proxy = FaultProxy::start(server(200_000, true)).unwrap();
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(proxy.addr().port(), proxy.port());
    let mut client = connect(&proxy);
    client.write_all(b"hello").unwrap();
    assert_eq!(read_all(&mut client), pattern(200_000));
    assert_eq!(proxy.bytes_down(), 200_000);
    wait_for("5 bytes up", || proxy.bytes_up() == 5);
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn cut_after_delivers_exactly_the_limit_on_each_connection() {
    let proxy = FaultProxy::start(server(100_000, true)).unwrap();
    proxy.set(Fault::CutAfter { bytes: 40_000 });
    for _ in 0..2 {
        let mut client = connect(&proxy);
        assert_eq!(read_all(&mut client), pattern(40_000));
    }
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.bytes_down(), 80_000);
}

#[test]
fn cut_after_set_mid_stream_cuts_a_connection_already_past_the_limit() {
    let proxy = FaultProxy::start(server(1_000, false)).unwrap();
    let mut client = connect(&proxy);
    let mut first = vec![0u8; 1_000];
    client.read_exact(&mut first).unwrap();
    proxy.set(Fault::CutAfter { bytes: 500 });
    assert!(read_all(&mut client).is_empty());
}

#[test]
fn corrupt_flips_exactly_one_bit_at_the_offset_of_each_connection() {
    let proxy = FaultProxy::start(server(50_000, true)).unwrap();
    proxy.set(Fault::Corrupt { at_byte: 12_345 });
    let expected = pattern(50_000);
    for _ in 0..2 {
        let mut client = connect(&proxy);
        let got = read_all(&mut client);
        assert_eq!(got.len(), expected.len());
        let diffs: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
        assert_eq!(diffs, vec![12_345]);
        assert_eq!((got[12_345] ^ expected[12_345]).count_ones(), 1);
    }
}

#[test]
fn refuse_closes_new_connections_at_once_and_cuts_existing_ones() {
    let proxy = FaultProxy::start(server(10, false)).unwrap();
    let mut existing = connect(&proxy);
    let mut first = [0u8; 10];
    existing.read_exact(&mut first).unwrap();

    proxy.set(Fault::Refuse);
    assert!(read_all(&mut existing).is_empty());
    let mut refused = connect(&proxy);
    assert!(read_all(&mut refused).is_empty());
    assert_eq!(proxy.connections(), 2);

    proxy.set(Fault::Pass);
    let mut again = connect(&proxy);
    again.read_exact(&mut first).unwrap();
    assert_eq!(first.to_vec(), pattern(10));
}

#[test]
fn stall_forwards_nothing_until_the_mode_changes() {
    let proxy = FaultProxy::start(server(30_000, true)).unwrap();
    proxy.set(Fault::Stall);
    let mut client = connect(&proxy);
    client.write_all(b"ping").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(proxy.bytes_down(), 0);
    assert_eq!(proxy.bytes_up(), 0);

    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    proxy.set(Fault::Pass);
    assert_eq!(read_all(&mut client), pattern(30_000));
    wait_for("4 bytes up", || proxy.bytes_up() == 4);
}

#[test]
fn bandwidth_still_delivers_every_byte() {
    let proxy = FaultProxy::start(server(60_000, true)).unwrap();
    proxy.set(Fault::Bandwidth {
        bytes_per_sec: 400_000,
    });
    let mut client = connect(&proxy);
    assert_eq!(read_all(&mut client), pattern(60_000));
    assert_eq!(proxy.bytes_down(), 60_000);
}

#[test]
fn cut_all_closes_open_connections_and_keeps_the_mode() {
    let proxy = FaultProxy::start(server(10, false)).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&proxy)).collect();
    for client in &mut clients {
        let mut first = [0u8; 10];
        client.read_exact(&mut first).unwrap();
    }
    wait_for("3 open connections", || proxy.open_connections() == 3);
    proxy.cut_all();
    for client in &mut clients {
        assert!(read_all(client).is_empty());
    }
    wait_for("no open connection", || proxy.open_connections() == 0);
    assert_eq!(proxy.fault(), Fault::Pass);
    let mut next = connect(&proxy);
    let mut first = [0u8; 10];
    next.read_exact(&mut first).unwrap();
}

#[test]
fn an_unreachable_upstream_gives_the_client_eof() {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = FaultProxy::start(nowhere).unwrap();
    let mut client = connect(&proxy);
    assert!(read_all(&mut client).is_empty());
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn drop_cuts_connections_and_frees_the_port() {
    let proxy = FaultProxy::start(server(10, false)).unwrap();
    let addr = proxy.addr();
    let mut client = connect(&proxy);
    let mut first = [0u8; 10];
    client.read_exact(&mut first).unwrap();
    drop(proxy);
    assert!(read_all(&mut client).is_empty());
    assert!(TcpStream::connect(addr).is_err());
    TcpListener::bind(addr).unwrap();
}
