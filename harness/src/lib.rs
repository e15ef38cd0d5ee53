//! Dev-only test harness: real services on free loopback ports and a TCP fault proxy.
