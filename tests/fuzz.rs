//! Fuzzing on stable Rust (proptest): arbitrary input to every place the
//! server parses what a peer or an operator sends, and arbitrary operation
//! sequences on the consistency engine. The property is the same
//! everywhere: no panic (a refusal is fine).
//!
//! - protobuf decoding of `SentMessage`, `Client`, `Acknowledgement` and
//!   `Update`, and a decoded `SentMessage` on through admission;
//! - the bench's own `Update` reader;
//! - bearer tokens: arbitrary text, tokens with arbitrary headers and
//!   claims, and correctly signed tokens with arbitrary claims (the
//!   `threads` claim among them);
//! - the TOML config file, through `serve`'s resolution of flags and file;
//! - the admin API's JSON bodies, through a real admin port;
//! - the engine, with client-sent numbers taken from all of `i64`.
//!
//! `PROPTEST_CASES` sets the cases per property (256 by default). CI runs
//! a bounded number; run longer with, e.g.,
//! `PROPTEST_CASES=20000 cargo test --release --test fuzz`.
//! A failure is shrunk and kept in `tests/fuzz.proptest-regressions`, which
//! is replayed first on every run.

mod common;

use dyconit_chat::auth::Verifier;
use dyconit_chat::consistency::{
    Bounds, BoundsTable, Engine, Micros, Settings, Submission, SubmissionAck,
};
use dyconit_chat::proto::{Acknowledgement, Client, SentMessage, Update};
use proptest::prelude::*;
use prost::Message;
use std::time::Duration;

const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!";

/// Bytes that are often close to valid protobuf: a valid encoding with
/// some bytes changed, cut short or extended, or plain noise.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        any::<i64>(),
        ".{0,12}",
        ".{0,40}",
        any::<i64>(),
        any::<i64>(),
    )
        .prop_map(|(id, thread, contents, ts, n)| {
            let m = SentMessage {
                thread: Some(dyconit_chat::proto::Thread { id: thread }),
                contents,
                timestamp: Some(dyconit_chat::proto::ServerTime { timestamp: ts }),
                acknowledgement: Some(Acknowledgement {
                    client: Some(Client { id }),
                    num_updates_received: n,
                    num_messages_sent: n.wrapping_add(1),
                }),
            };
            m.encode_to_vec()
        });
    let mutated = (
        valid,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut b, edits, cut)| {
            for (at, byte) in edits {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
            }
            let keep = cut.index(b.len() + 1);
            b.truncate(keep.max(b.len() / 2));
            b
        });
    prop_oneof![mutated, prop::collection::vec(any::<u8>(), 0..256)]
}

/// An engine with one streaming client (id 1), for decoded messages.
fn engine_with_a_client() -> Engine {
    let mut e = Engine::new(Settings::default(), 0, vec![]);
    let now = Micros(1_700_000_000_000_000);
    e.connect(1, 1, "c".into(), now);
    let _ = e.start_stream(1, now);
    e
}

proptest! {
    #[test]
    fn wire_decoding_never_panics(bytes in wire_bytes()) {
        let _ = Client::decode(bytes.as_slice());
        let _ = Acknowledgement::decode(bytes.as_slice());
        let _ = Update::decode(bytes.as_slice());
        let _ = dyconit_chat::bench::wire::parse_update(&bytes);
        if let Ok(m) = SentMessage::decode(bytes.as_slice()) {
            let mut e = engine_with_a_client();
            let sub = dyconit_chat::server::convert::submission(m);
            let now = Micros(1_700_000_000_100_000);
            let _ = e.submit(sub, now);
            let _ = e.poll(Micros(now.0 + 10_000_000));
        }
    }
}

/// A JSON value of any shape, small.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
        prop_oneof![Just("*"), Just("team-*"), Just(""), Just("1h"), Just("0s")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: the ones the server reads, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "name",
            "sub",
            "exp",
            "nbf",
            "iat",
            "threads",
            "read",
            "write",
            "alg",
            "kid",
            "staleness",
            "staleness_ms",
            "numerical",
            "order",
            "filter",
            "target",
            "max_staleness",
            "max_numerical",
            "max_order",
            "enabled",
        ])
        .prop_map(str::to_owned),
        "[a-z]{1,6}",
    ]
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn verifier() -> Verifier {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    Verifier::from_secret_file(&path).unwrap()
}

proptest! {
    #[test]
    fn bearer_tokens_never_panic(
        text in ".{0,80}",
        header in json(),
        claims in json(),
        mut signed in prop::collection::btree_map(key(), json(), 0..6),
        exp_offset in -100i64..100_000,
    ) {
        let v = verifier();
        let _ = v.identify(Some(&text));
        let _ = v.identify(Some(&format!("Bearer {text}")));
        let forged = format!("Bearer {}.{}.{}", b64(&header), b64(&claims), "c2ln");
        let _ = v.identify(Some(&forged));
        // Correctly signed, with arbitrary claims around a valid exp.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        signed.entry("exp".into()).or_insert((now + exp_offset).into());
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &signed,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let _ = v.identify(Some(&format!("Bearer {token}")));
    }
}

/// A TOML value of any type, as text.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"1h\"",
            "\"0s\"",
            "\"99999999999999d\"",
            "\"-1s\"",
            "\"memory\"",
            "\"durable\"",
            "\"nats\"",
            "\"127.0.0.1:0\"",
            "[]",
            "[\"a\"]",
            "{}",
            "{ staleness = \"1s\" }",
        ])
        .prop_map(str::to_owned),
    ]
}

fn config_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "listen",
            "admin_listen",
            "staleness",
            "numerical",
            "order",
            "lease",
            "ack_timeout",
            "history",
            "max_message_bytes",
            "max_clock_skew",
            "max_update_bytes",
            "max_outbound_bytes",
            "storage",
            "data_dir",
            "retention_messages",
            "retention_age",
            "admin_token",
            "admin_hosts",
            "otlp_endpoint",
            "max_connections",
            "max_streams_per_connection",
            "handshake_timeout",
            "idle_timeout",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// A config file: top-level keys, then `[threads.*]` and `[policy.load]`
/// tables, all with values of any type; or plain noise.
fn config_text() -> impl Strategy<Value = String> {
    let table = |name: &'static str| {
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "staleness",
                    "numerical",
                    "order",
                    "enabled",
                    "target",
                    "max_staleness",
                    "max_numerical",
                    "max_order",
                    "x",
                ]),
                toml_value(),
            ),
            0..4,
        )
        .prop_map(move |kv| {
            let body: String = kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            format!("[{name}]\n{body}")
        })
    };
    let structured = (
        prop::collection::btree_map(config_key(), toml_value(), 0..8),
        prop::option::of(table("threads.ops")),
        prop::option::of(table("policy.load")),
    )
        .prop_map(|(top, threads, policy)| {
            let mut s: String = top.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            s.extend(threads);
            s.extend(policy);
            s
        });
    prop_oneof![4 => structured, 1 => ".{0,200}"]
}

proptest! {
    #[test]
    fn config_files_never_panic(text in config_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let args = dyconit_chat::config::ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let _ = args.resolve();
    }
}

/// One engine operation; client-sent numbers range over all of `i64`.
#[derive(Debug, Clone)]
enum Op {
    Connect(u8),
    Stream(u8),
    Ack(u8, i64),
    Send {
        client: u8,
        thread: String,
        contents: String,
        updates: i64,
        number: i64,
        /// Microseconds before now (negative: in the future); `None`:
        /// no timestamp.
        age: Option<i64>,
    },
    Refused(u8, i64),
    Remove(u8),
    Advance(u32),
    Persist,
    Fail,
    Bounds(u64, u64, u64),
    FlushAll,
}

fn engine_op() -> impl Strategy<Value = Op> {
    let client = 0u8..6;
    let count = prop_oneof![-3i64..12, any::<i64>()];
    prop_oneof![
        1 => client.clone().prop_map(Op::Connect),
        1 => client.clone().prop_map(Op::Stream),
        2 => (client.clone(), count.clone()).prop_map(|(c, n)| Op::Ack(c, n)),
        5 => (
            client.clone(),
            prop_oneof![Just(String::new()), "[ab]", ".{0,130}"],
            ".{0,20}",
            count.clone(),
            count.clone(),
            prop::option::of(prop_oneof![-2_000_000i64..2_000_000, any::<i64>()]),
        )
            .prop_map(|(client, thread, contents, updates, number, age)| Op::Send {
                client, thread, contents, updates, number, age,
            }),
        1 => (client.clone(), count).prop_map(|(c, n)| Op::Refused(c, n)),
        1 => client.prop_map(Op::Remove),
        2 => (0u32..3_000_000).prop_map(Op::Advance),
        2 => Just(Op::Persist),
        1 => Just(Op::Fail),
        1 => (0u64..5_000, 0u64..300, 0u64..40).prop_map(|(s, n, o)| Op::Bounds(s, n, o)),
        1 => Just(Op::FlushAll),
    ]
}

/// Client slot `c` as an id: slots 0–4 are real clients, 5 an unknown id.
fn id(c: u8) -> i64 {
    if c == 5 { i64::MAX } else { c as i64 + 1 }
}

fn run(e: &mut Engine, op: Op, now: &mut Micros) {
    match op {
        Op::Connect(c) => {
            e.connect(id(c), c as u64, format!("c{c}").into(), *now);
        }
        Op::Stream(c) => {
            let _ = e.start_stream(id(c), *now);
        }
        Op::Ack(c, n) => {
            let _ = e.acknowledge(id(c), n, *now);
        }
        Op::Send {
            client,
            thread,
            contents,
            updates,
            number,
            age,
        } => {
            let sub = Submission {
                ack: Some(SubmissionAck {
                    client: Some(id(client)),
                    updates_received: updates,
                    messages_sent: number,
                }),
                thread,
                contents,
                timestamp: age.map(|a| Micros(now.0.saturating_sub(a))),
            };
            let _ = e.submit(sub, *now);
        }
        Op::Refused(c, n) => e.note_refused(id(c), n),
        Op::Remove(c) => {
            e.remove(id(c));
        }
        Op::Advance(us) => {
            *now = Micros(now.0 + us as i64);
            let _ = e.poll(*now);
        }
        Op::Persist => e.mark_durable(e.head()),
        Op::Fail => {
            e.discard_pending();
        }
        Op::Bounds(s, n, o) => {
            let b = Bounds {
                staleness: Duration::from_millis(s),
                numerical: n,
                order: o,
            };
            if let Ok(table) = BoundsTable::new(b) {
                e.set_bounds(table);
            }
        }
        Op::FlushAll => {
            let _ = e.flush_all(*now);
        }
    }
}

proptest! {
    #[test]
    fn the_engine_survives_arbitrary_operations(ops in prop::collection::vec(engine_op(), 1..80)) {
        let mut e = Engine::new(Settings::default(), 0, vec![]);
        let mut now = Micros(1_700_000_000_000_000);
        for op in ops {
            run(&mut e, op, &mut now);
        }
    }
}

/// Admin API bodies through a real admin port: any JSON (or none) to every
/// `PUT`, answered with a status below 500.
#[tokio::test]
async fn admin_bodies_never_fail_the_server() {
    let server = common::TestServer::start(common::config(50, 256, 32)).await;
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(256);
    let body = prop_oneof![
        4 => json().prop_map(|v| v.to_string()),
        1 => ".{0,40}".prop_map(|s: String| s),
    ];
    let strategy = (
        prop::sample::select(vec![
            "/api/v1/bounds/default",
            "/api/v1/bounds/threads/ops",
            "/api/v1/bounds/threads/%00x",
            "/api/v1/policies/load",
        ]),
        body,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    use proptest::strategy::ValueTree;
    let mut inputs: Vec<(&str, String)> = Vec::new();
    for _ in 0..cases {
        inputs.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for (path, body) in inputs {
        let (status, text) = common::http(server.admin, "PUT", path, None, Some(&body)).await;
        assert!(status < 500, "PUT {path} {body:?}: {status} {text}");
    }
    // The log filter: arbitrary JSON, but never one that turns logging up
    // for the rest of the test run.
    for v in ["{}", "[]", "null", "{\"filter\": 7}", "{\"filter\": \"\"}"] {
        let (status, text) =
            common::http(server.admin, "PUT", "/api/v1/log-level", None, Some(v)).await;
        assert!(status < 500, "log-level {v}: {status} {text}");
    }
    // Query strings of the listings, including the case that once
    // overflowed `offset + limit` (a panic in a debug build).
    let count = prop_oneof![
        (0u64..30).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9a-z%-]{0,6}",
    ];
    let mut queries = vec![("18446744073709551615".to_owned(), "20".to_owned())];
    for _ in 0..cases {
        queries.push(
            (count.clone(), count.clone())
                .new_tree(&mut runner)
                .unwrap()
                .current(),
        );
    }
    for (offset, limit) in queries {
        for path in ["/api/v1/clients", "/api/v1/stats/history"] {
            let path = format!("{path}?offset={offset}&limit={limit}&seconds={limit}");
            let (status, text) = common::http(server.admin, "GET", &path, None, None).await;
            assert!(status < 500, "GET {path}: {status} {text}");
        }
    }
    let (status, _) = common::http(server.admin, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}
