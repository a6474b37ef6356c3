//! Property tests: decoding arbitrary bytes is an error or a value, never a panic; every message
//! survives an encode/decode round trip; token parsing never panics.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use proptest::prelude::*;
use spark_common::host::{DiskUsage, HostSnapshot, LoadAverage};
use spark_common::proto::{AgentMsg, ControllerMsg, Hello, decode, encode};
use spark_common::token::JoinToken;

fn snapshot_strategy() -> impl Strategy<Value = HostSnapshot> {
    (
        ".{0,20}",
        ".{0,20}",
        any::<u64>(),
        any::<u32>(),
        0f32..100f32,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec((".{0,10}", any::<u64>(), any::<u64>()), 0..4),
    )
        .prop_map(
            |(hostname, os, uptime, cores, cpu, total, avail, disks)| HostSnapshot {
                hostname,
                os,
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                uptime_secs: uptime,
                cpu_cores: cores,
                cpu_usage_pct: cpu,
                load: LoadAverage {
                    one: cpu,
                    five: 0.0,
                    fifteen: 1.0,
                },
                mem_total_bytes: total,
                mem_available_bytes: avail,
                disks: disks
                    .into_iter()
                    .map(|(m, t, a)| DiskUsage {
                        mount_point: m,
                        file_system: "ext4".into(),
                        total_bytes: t,
                        available_bytes: a,
                    })
                    .collect(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<AgentMsg>(&bytes);
        let _ = decode::<ControllerMsg>(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(snap in snapshot_strategy(), idx in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut bytes = encode(&AgentMsg::HostSnapshot(snap));
        let i = idx % bytes.len();
        bytes[i] = byte;
        let _ = decode::<AgentMsg>(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = decode::<AgentMsg>(&bytes);
    }

    #[test]
    fn snapshots_round_trip(snap in snapshot_strategy()) {
        let msg = AgentMsg::HostSnapshot(snap);
        prop_assert_eq!(decode::<AgentMsg>(&encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn token_parse_never_panics(text in ".{0,300}") {
        let _ = JoinToken::parse(&text);
        let _ = JoinToken::parse(&format!("sparkjoin1.{text}"));
    }
}

/// A length prefix claiming a huge string must not allocate or panic.
#[test]
fn huge_declared_lengths_are_errors() {
    // variant 0, then a string length varint of ~2^63.
    let frame = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(decode::<AgentMsg>(&frame).is_err());
    // Hello with a features vector claiming 2^32 entries.
    let mut frame = encode(&Hello::current(&[]));
    frame.pop();
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode::<Hello>(&frame).is_err());
}
