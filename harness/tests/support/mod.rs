//! A tiny hand-rolled MQTT 3.1.1 client over `TcpStream`, just enough to check persistent sessions.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct MiniMqtt {
    stream: TcpStream,
}

/// A PUBLISH as received.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

impl MiniMqtt {
    /// Connects and returns the client and CONNACK's session-present flag; panics unless accepted.
    pub fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (MiniMqtt, bool) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = MiniMqtt { stream };
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        body.push(4);
        body.push(if clean { 0x02 } else { 0x00 });
        body.extend_from_slice(&60u16.to_be_bytes());
        string(&mut body, client_id);
        client.send(&packet(0x10, &body));
        let (kind, connack) = client.read_packet().unwrap();
        assert_eq!(kind & 0xF0, 0x20, "expected CONNACK");
        assert_eq!(connack.get(1), Some(&0), "connection refused: {connack:?}");
        (client, connack[0] & 1 == 1)
    }

    pub fn subscribe(&mut self, topic: &str, qos: u8) {
        let mut body = 1u16.to_be_bytes().to_vec();
        string(&mut body, topic);
        body.push(qos);
        self.send(&packet(0x82, &body));
        let (kind, suback) = self.read_packet().unwrap();
        assert_eq!(kind & 0xF0, 0x90, "expected SUBACK");
        assert_eq!(suback.get(2), Some(&qos), "subscription refused");
    }

    /// QoS 1 publish, waits for PUBACK.
    pub fn publish_qos1(&mut self, topic: &str, payload: &[u8]) {
        let mut body = Vec::new();
        string(&mut body, topic);
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(payload);
        self.send(&packet(0x32, &body));
        let (kind, puback) = self.read_packet().unwrap();
        assert_eq!(kind & 0xF0, 0x40, "expected PUBACK");
        assert_eq!(puback, 7u16.to_be_bytes());
    }

    /// The next PUBLISH (acknowledged if QoS 1); an error if none came within `wait`.
    pub fn next_publish(&mut self, wait: Duration) -> io::Result<Publish> {
        self.stream.set_read_timeout(Some(wait))?;
        let (kind, body) = self.read_packet()?;
        assert_eq!(kind & 0xF0, 0x30, "expected PUBLISH, got {kind:#x}");
        let qos = (kind >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
        let mut rest = &body[2 + topic_len..];
        let packet_id = if qos > 0 {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            self.send(&packet(0x40, &id.to_be_bytes()));
            Some(id)
        } else {
            None
        };
        Ok(Publish {
            topic,
            qos,
            packet_id,
            payload: rest.to_vec(),
        })
    }

    pub fn disconnect(mut self) {
        self.send(&[0xE0, 0x00]);
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read_packet(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        self.stream.read_exact(&mut first)?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b)?;
            len |= usize::from(b[0] & 0x7F) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((first[0], body))
    }
}
