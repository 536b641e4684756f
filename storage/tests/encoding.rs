//! Outbox record encoding: roundtrip, old formats still decode, garbage never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use gxd_storage::StorageError;
use gxd_storage::outbox::record::{
    CommandRecordPb, RECORD_FORMAT_V1, decode_command, encode_command, encode_v1,
};
use gxd_storage::outbox::{
    AttemptOutcome, AttemptRecord, ChaincodeResult, Command, CommandError, CommandId, Status,
};
use proptest::prelude::*;

/// A record written by format version 1 (gxd 0.1), frozen. It must decode forever; when
/// the format changes, add the new version's fixture beside it, never replace it.
const V1_FIXTURE_KEY: &str = "0190f3b6a0007000800000000000002a";
const V1_FIXTURE: &str = "010a100190f3b6a0007000800000000000002a12046f7267311a0f5452414e534645525f544f4b454e5322057265712d312a0877616c6c65742d6132107b22616d6f756e74223a22313030227d3a200707070707070707070707070707070707070707070707070707070707070707400348025080e0f4bf87325a210a07656e646f727365120b554e415641494c41424c451a097065657220646f776e6204616231326a030102037880e0f4bf87328001f4e3f4bf8732880190e3f4bf87329001f4e3f4bf8732a80109b00101ba0111080110011a046161303028e4e0f4bf8732";

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn fixture_command() -> Command {
    let id: CommandId = "0190f3b6-a000-7000-8000-00000000002a".parse().unwrap();
    Command {
        id,
        tenant: "org1".into(),
        command_type: "TRANSFER_TOKENS".into(),
        request_id: "req-1".into(),
        partition_key: "wallet-a".into(),
        extra_partition_keys: Vec::new(),
        payload: br#"{"amount":"100"}"#.to_vec(),
        payload_digest: [7; 32],
        status: Status::Submitted,
        attempts: 2,
        next_attempt_at: ts(1_720_000_000_000),
        last_error: Some(CommandError {
            stage: "endorse".into(),
            code: "UNAVAILABLE".into(),
            message: "peer down".into(),
        }),
        txid: Some("ab12".into()),
        signed_tx: Some(vec![1, 2, 3]),
        block_number: None,
        created_at: ts(1_720_000_000_000),
        updated_at: ts(1_720_000_000_500),
        prepared_at: Some(ts(1_720_000_000_400)),
        submitted_at: Some(ts(1_720_000_000_500)),
        committed_at: None,
        failed_at: None,
        tx_index: None,
        result: None,
        projected_at: None,
        requeues: 1,
        history: vec![AttemptRecord {
            attempt: 1,
            outcome: AttemptOutcome::Retried,
            txid: Some("aa00".into()),
            error: None,
            at: ts(1_720_000_000_100),
        }],
        queue_seq: 9,
    }
}

#[test]
fn v1_fixture_still_decodes() {
    let key = hex::decode(V1_FIXTURE_KEY).unwrap();
    let bytes = hex::decode(V1_FIXTURE).unwrap();
    assert_eq!(bytes[0], RECORD_FORMAT_V1);
    let decoded = decode_command(&key, &bytes).unwrap();
    assert_eq!(decoded, fixture_command());
}

/// A PROJECTED record with the fields added for late commits and projection (tx index,
/// chaincode result, projected_at, a SUPERSEDED attempt), frozen like [`V1_FIXTURE`].
const V1_PROJECTED_FIXTURE: &str = "010a100190f3b6a0007000800000000000002a12046f7267311a0f5452414e534645525f544f4b454e5322057265712d312a0877616c6c65742d6132107b22616d6f756e74223a22313030227d3a200707070707070707070707070707070707070707070707070707070707070707400648025080e0f4bf87325a210a07656e646f727365120b554e415641494c41424c451a097065657220646f776e620461623132700c7880e0f4bf87328001f4e3f4bf8732880190e3f4bf87329001f4e3f4bf87329801d8e4f4bf8732a80109b00101ba0111080110011a046161303028e4e0f4bf8732ba0111080210041a046262303128d8e4f4bf8732c00103ca011008c801120b7b226f6b223a747275657dd001bce5f4bf8732";

fn projected_fixture_command() -> Command {
    let mut c = fixture_command();
    c.status = Status::Projected;
    c.signed_tx = None;
    c.block_number = Some(12);
    c.tx_index = Some(3);
    c.result = Some(ChaincodeResult {
        status: Some(200),
        payload: br#"{"ok":true}"#.to_vec(),
        truncated: false,
    });
    c.committed_at = Some(ts(1_720_000_000_600));
    c.projected_at = Some(ts(1_720_000_000_700));
    c.history.push(AttemptRecord {
        attempt: 2,
        outcome: AttemptOutcome::Superseded,
        txid: Some("bb01".into()),
        error: None,
        at: ts(1_720_000_000_600),
    });
    c
}

#[test]
fn the_v1_fixture_has_no_commit_details() {
    // Written before tx index, result and projected_at existed: they decode as absent.
    let key = hex::decode(V1_FIXTURE_KEY).unwrap();
    let decoded = decode_command(&key, &hex::decode(V1_FIXTURE).unwrap()).unwrap();
    assert_eq!(
        (decoded.tx_index, decoded.result, decoded.projected_at),
        (None, None, None)
    );
}

#[test]
fn projected_fixture_decodes_and_is_stable() {
    let c = projected_fixture_command();
    let key = c.id.to_bytes();
    assert_eq!(hex::encode(encode_command(&c)), V1_PROJECTED_FIXTURE);
    let decoded = decode_command(&key, &hex::decode(V1_PROJECTED_FIXTURE).unwrap()).unwrap();
    assert_eq!(decoded, c);
}

/// A command with extra partition keys (field 27, added for multi-key partitions), frozen
/// like [`V1_FIXTURE`]: the same record plus two keys.
const V1_MULTIKEY_FIXTURE: &str = "010a100190f3b6a0007000800000000000002a12046f7267311a0f5452414e534645525f544f4b454e5322057265712d312a0877616c6c65742d6132107b22616d6f756e74223a22313030227d3a200707070707070707070707070707070707070707070707070707070707070707400348025080e0f4bf87325a210a07656e646f727365120b554e415641494c41424c451a097065657220646f776e6204616231326a030102037880e0f4bf87328001f4e3f4bf8732880190e3f4bf87329001f4e3f4bf8732a80109b00101ba0111080110011a046161303028e4e0f4bf8732da010877616c6c65742d62da010877616c6c65742d6d";

#[test]
fn multikey_fixture_decodes_and_is_stable() {
    let mut c = fixture_command();
    c.extra_partition_keys = vec!["wallet-b".into(), "wallet-m".into()];
    assert_eq!(hex::encode(encode_command(&c)), V1_MULTIKEY_FIXTURE);
    let decoded = decode_command(&c.id.to_bytes(), &hex::decode(V1_MULTIKEY_FIXTURE).unwrap());
    assert_eq!(decoded.unwrap(), c);
    assert_eq!(
        c.partition_keys().collect::<Vec<_>>(),
        ["wallet-a", "wallet-b", "wallet-m"]
    );
    // Written before the field existed: no extra keys.
    let key = hex::decode(V1_FIXTURE_KEY).unwrap();
    let old = decode_command(&key, &hex::decode(V1_FIXTURE).unwrap()).unwrap();
    assert!(old.extra_partition_keys.is_empty());
}

#[test]
fn extra_partition_keys_the_queues_cannot_use_are_corrupt() {
    // Repeated, out of order, empty, or the first key again: a record the queues would
    // mis-handle is refused, naming its key.
    for extras in [
        vec!["wallet-m", "wallet-m"],
        vec!["wallet-m", "wallet-b"],
        vec![""],
        vec!["wallet-a"],
    ] {
        let mut c = fixture_command();
        c.extra_partition_keys = extras.iter().map(|k| (*k).to_owned()).collect();
        match decode_command(&c.id.to_bytes(), &encode_command(&c)) {
            Err(StorageError::Corrupt { cf: "commands", .. }) => {}
            other => panic!("{extras:?}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn current_encoding_of_the_fixture_command_is_stable() {
    // If this fails, the encoding changed: keep V1_FIXTURE decoding (above) and record the
    // new bytes as a new fixture rather than editing the old one.
    assert_eq!(hex::encode(encode_command(&fixture_command())), V1_FIXTURE);
}

/// What the first writer of format 1 could have known: a subset of today's fields (the
/// fields added later must decode to "absent").
#[derive(Clone, PartialEq, prost::Message)]
struct OlderCommandRecord {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, tag = "2")]
    tenant: String,
    #[prost(string, tag = "3")]
    command_type: String,
    #[prost(string, tag = "4")]
    request_id: String,
    #[prost(string, tag = "5")]
    partition_key: String,
    #[prost(bytes = "vec", tag = "6")]
    payload: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    payload_digest: Vec<u8>,
    #[prost(uint32, tag = "8")]
    status: u32,
    #[prost(int64, tag = "10")]
    next_attempt_at_ms: i64,
    #[prost(int64, tag = "15")]
    created_at_ms: i64,
    #[prost(int64, tag = "16")]
    updated_at_ms: i64,
}

/// A future writer that added a field this version does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct NewerCommandRecord {
    #[prost(message, optional, tag = "1")]
    base: Option<CommandRecordPb>,
}

#[test]
fn a_record_from_an_older_writer_decodes_with_defaults() {
    let id = CommandId::new_v7();
    let old = OlderCommandRecord {
        id: id.to_bytes().to_vec(),
        tenant: "t".into(),
        command_type: "CREATE_USER".into(),
        request_id: "r".into(),
        partition_key: "u1".into(),
        payload: b"{}".to_vec(),
        payload_digest: vec![1; 32],
        status: 1,
        next_attempt_at_ms: 5,
        created_at_ms: 5,
        updated_at_ms: 6,
    };
    let c = decode_command(&id.to_bytes(), &encode_v1(&old)).unwrap();
    assert_eq!(c.id, id);
    assert_eq!(c.status, Status::Pending);
    assert_eq!(c.attempts, 0);
    assert!(c.history.is_empty() && c.txid.is_none() && c.last_error.is_none());
    assert_eq!(c.requeues, 0);
    assert_eq!(c.created_at, ts(5));
}

#[test]
fn a_record_from_a_newer_writer_with_unknown_fields_decodes() {
    let c = fixture_command();
    let mut body = Vec::new();
    prost::Message::encode_raw(&gxd_storage::outbox::record::to_pb(&c), &mut body);
    // Append field 99 (length-delimited) that this version does not know.
    body.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
    let mut bytes = vec![RECORD_FORMAT_V1];
    bytes.extend_from_slice(&body);
    assert_eq!(decode_command(&c.id.to_bytes(), &bytes).unwrap(), c);
    let _ = NewerCommandRecord::default();
}

#[test]
fn corrupt_records_name_their_key() {
    let key = CommandId::new_v7().to_bytes();
    for bad in [
        &[][..],
        &[0x02, 1, 2][..],
        &[RECORD_FORMAT_V1, 0xff, 0xff, 0xff][..],
    ] {
        match decode_command(&key, bad) {
            Err(StorageError::Corrupt { cf, key: k, .. }) => {
                assert_eq!(cf, "commands");
                assert_eq!(k, hex::encode(key));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // A valid record under another key is corrupt too.
    let c = fixture_command();
    assert!(matches!(
        decode_command(&CommandId::new_v7().to_bytes(), &encode_command(&c)),
        Err(StorageError::Corrupt { .. })
    ));
}

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000_000).prop_map(ts)
}

fn arb_error() -> impl Strategy<Value = CommandError> {
    (".{0,10}", ".{0,10}", ".{0,40}").prop_map(|(stage, code, message)| CommandError {
        stage,
        code,
        message,
    })
}

prop_compose! {
    fn arb_command()(
        id in any::<[u8; 16]>(),
        tenant in ".{0,20}",
        command_type in "[A-Z_]{1,20}",
        request_id in ".{1,30}",
        partition_key in ".{0,30}",
        extra_partition_keys in proptest::collection::btree_set(".{1,12}", 0..4),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        payload_digest in any::<[u8; 32]>(),
        status in prop::sample::select(Status::ALL.to_vec()),
        attempts in any::<u32>(),
        times in proptest::collection::vec(arb_time(), 3),
        opt_times in proptest::collection::vec(proptest::option::of(arb_time()), 4),
        last_error in proptest::option::of(arb_error()),
        txid in proptest::option::of("[0-9a-f]{0,64}"),
        signed_tx in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
        block_number in proptest::option::of(any::<u64>()),
        requeues in any::<u32>(),
        queue_seq in any::<u64>(),
        tx_index in proptest::option::of(any::<u32>()),
        result in proptest::option::of((proptest::option::of(any::<i32>()), proptest::collection::vec(any::<u8>(), 0..50), any::<bool>())),
        projected_at in proptest::option::of(arb_time()),
        history in proptest::collection::vec(
            (any::<u32>(), prop::sample::select(vec![AttemptOutcome::Retried, AttemptOutcome::Failed, AttemptOutcome::Requeued, AttemptOutcome::Superseded]),
             proptest::option::of("[0-9a-f]{0,8}"), proptest::option::of(arb_error()), arb_time()),
            0..5),
    ) -> Command {
        let extra_partition_keys = extra_partition_keys.into_iter().filter(|k| *k != partition_key).collect();
        Command {
            id: CommandId::from_slice(&id).unwrap(),
            tenant, command_type, request_id, partition_key, extra_partition_keys, payload, payload_digest, status,
            attempts,
            next_attempt_at: times[0],
            last_error, txid, signed_tx, block_number,
            created_at: times[1],
            updated_at: times[2],
            prepared_at: opt_times[0],
            submitted_at: opt_times[1],
            committed_at: opt_times[2],
            failed_at: opt_times[3],
            tx_index,
            result: result.map(|(status, payload, truncated)| ChaincodeResult { status, payload, truncated }),
            projected_at,
            requeues,
            history: history.into_iter().map(|(attempt, outcome, txid, error, at)| AttemptRecord { attempt, outcome, txid, error, at }).collect(),
            queue_seq,
        }
    }
}

proptest! {
    #[test]
    fn roundtrip(c in arb_command()) {
        let bytes = encode_command(&c);
        prop_assert_eq!(decode_command(&c.id.to_bytes(), &bytes).unwrap(), c);
    }

    #[test]
    fn arbitrary_bytes_never_panic(key in proptest::collection::vec(any::<u8>(), 0..20),
                                   bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match decode_command(&key, &bytes) {
            Ok(c) => prop_assert_eq!(c.id.to_bytes().to_vec(), key),
            Err(e) => { let is_corrupt = matches!(e, StorageError::Corrupt { .. }); prop_assert!(is_corrupt) },
        }
    }

    #[test]
    fn truncated_records_never_panic(c in arb_command(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_command(&c);
        let cut = cut.index(bytes.len());
        let _ = decode_command(&c.id.to_bytes(), &bytes[..cut]);
    }
}
