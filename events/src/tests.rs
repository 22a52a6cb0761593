use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SIGNER: &str = "UCXQF6GWDDSBQQIZ34UXABDPDZ6C6HW2ZRXL5VIDJCN7JMASVM6ERH5C";

fn record_for(event: &Event, seq: u64, prev: Sha256Digest) -> RecordedEvent {
    RecordedEvent {
        seq,
        stream_version: seq,
        recorded_at: Timestamp(1_795_946_400_000_000_000 + seq as i64),
        batch_index: 0,
        batch_len: 1,
        seal: Some(Seal {
            conditions: Sha256Digest::ZERO,
            signature: Signature([seq as u8; 64]),
        }),
        statement: Statement {
            stream: event.default_stream(),
            event_id: uuid::Uuid::from_u128(seq as u128 * 7919),
            event_type: event.event_type().as_str().to_string(),
            schema_version: SCHEMA_VERSION,
            actor: "tester".into(),
            causation_id: None,
            correlation_id: Some(uuid::Uuid::from_u128(42)),
            idempotency_key: Some(format!("k{seq}")),
            payload: event.encode_payload().unwrap(),
            signer: SIGNER.into(),
        },
        prev_hash: prev,
        hash: Sha256Digest::ZERO,
    }
    .with_hash()
    .unwrap()
}

/// Every catalog type round-trips through its payload encoding and through
/// the full envelope (MessagePack and JSON), byte for byte.
#[test]
fn every_event_type_round_trips() {
    for ty in EventType::ALL.iter().copied() {
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        let strategy = catalog::arbitrary_of(ty);
        runner
            .run(&strategy, |event| {
                let bytes = event.encode_payload().unwrap();
                let back = Event::decode_payload(ty, &bytes).unwrap();
                prop_assert_eq!(back.encode_payload().unwrap(), bytes.clone());
                let rec = record_for(&event, 3, Sha256Digest::of(b"prev"));
                let stored = rec.encode().unwrap();
                let decoded = RecordedEvent::decode(&stored).unwrap();
                prop_assert_eq!(&decoded, &rec);
                prop_assert_eq!(hash_record_bytes(&stored).unwrap(), rec.hash);
                let env = decoded.to_envelope().unwrap();
                prop_assert_eq!(env.event.encode_payload().unwrap(), bytes);
                prop_assert_eq!(env.event_type(), ty);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", ty.as_str()));
    }
}

#[test]
fn type_names_are_unique_and_parse_back() {
    let mut seen = std::collections::BTreeSet::new();
    for ty in EventType::ALL {
        assert!(seen.insert(ty.as_str()));
        assert_eq!(EventType::parse(ty.as_str()), Some(*ty));
    }
    assert_eq!(EventType::ALL.len(), 27);
    assert_eq!(EventType::parse("RunExploded"), None);
}

fn sample() -> Event {
    Event::RunCancelled(RunCancelled {
        run_id: "r1".into(),
        reason: "because".into(),
    })
}

#[test]
fn the_chain_hash_is_over_the_fields_with_the_statement_as_its_digest() {
    let rec = record_for(&sample(), 1, Sha256Digest::of(b"prev"));
    // Independent computation: the fields through rmp-serde, the statement
    // replaced by its sha256.
    let statement = (
        RECORD_FORMAT,
        &rec.stream,
        serde_bytes::Bytes::new(rec.event_id.as_bytes()),
        &rec.event_type,
        rec.schema_version,
        &rec.actor,
        rec.causation_id
            .map(|c| serde_bytes::ByteBuf::from(c.as_bytes().to_vec())),
        rec.correlation_id
            .map(|c| serde_bytes::ByteBuf::from(c.as_bytes().to_vec())),
        &rec.idempotency_key,
        serde_bytes::Bytes::new(&rec.payload),
        &rec.signer,
    );
    let seal = rec.seal.unwrap();
    let leading = (
        rec.seq,
        rec.stream_version,
        rec.recorded_at.0,
        rec.batch_index,
        rec.batch_len,
        (seal.conditions, serde_bytes::Bytes::new(&seal.signature.0)),
    );
    let leading = rmp_serde::to_vec(&leading).unwrap();
    let statement_digest = Sha256Digest::of(&rmp_serde::to_vec(&statement).unwrap());
    let mut input = rec.prev_hash.0.to_vec();
    input.push(0x98);
    input.extend(&leading[1..]); // the six fields, without their array header
    input.extend(statement_digest.0);
    input.extend(rmp_serde::to_vec(&rec.prev_hash).unwrap());
    assert_eq!(Sha256Digest::of(&input), rec.hash);
    let stored = rec.encode().unwrap();
    assert_eq!(stored_hash(&stored), Some(rec.hash));
    // The statement's bytes are a slice of the record, and its digest is theirs.
    let view = RecordRef::decode(&stored).unwrap();
    assert_eq!(view.statement_bytes, rmp_serde::to_vec(&statement).unwrap());
    assert_eq!(view.statement_digest(), rec.statement.digest());
}

#[test]
fn any_changed_field_changes_the_hash() {
    let rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    let mut other = rec.clone();
    other.actor = "mallory".into();
    assert_ne!(other.compute_hash().unwrap(), rec.hash);
    let mut other = rec.clone();
    other.prev_hash = Sha256Digest::of(b"x");
    assert_ne!(other.compute_hash().unwrap(), rec.hash);
    let mut other = rec.clone();
    other.seal = None;
    assert_ne!(other.compute_hash().unwrap(), rec.hash);
    let mut other = rec.clone();
    other.batch_len = 2;
    assert_ne!(other.compute_hash().unwrap(), rec.hash);
}

#[test]
fn statements_and_conditions_bind_what_they_should() {
    let rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    let mut other = rec.statement.clone();
    other.signer = other.signer.replace('U', "V");
    assert_ne!(other.digest(), rec.statement.digest());
    // The seq and time are not part of what a signer vouches for.
    let mut moved = rec.clone();
    moved.seq = 9;
    assert_eq!(moved.statement.digest(), rec.statement.digest());
    let none = conditions_digest([]);
    assert_eq!(none, Sha256Digest::ZERO);
    let a = conditions_digest([("run/a", ExpectedVersion::Exact(3))]);
    let b = conditions_digest([("run/a", ExpectedVersion::Exact(4))]);
    let c = conditions_digest([("run/a", ExpectedVersion::NoStream)]);
    assert!(a != b && b != c && a != c && a != none);
    let d = [rec.statement.digest()];
    assert_ne!(batch_message(&a, &d), batch_message(&b, &d));
    assert_ne!(batch_message(&a, &d), batch_message(&a, &[d[0], d[0]]));
}

#[test]
fn format_1_records_are_refused_by_name() {
    let mut bytes = record_for(&sample(), 1, Sha256Digest::ZERO)
        .encode()
        .unwrap();
    bytes[0] = 0x9e;
    let e = RecordedEvent::decode(&bytes).unwrap_err().to_string();
    assert!(e.contains("format 1"), "{e}");
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_different_record() {
    let rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    let bytes = rec.encode().unwrap();
    for n in 0..bytes.len() {
        assert!(RecordedEvent::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            if let Ok(r) = RecordedEvent::decode(&b) {
                let same_hash = hash_record_bytes(&b).map(|h| h == r.hash).unwrap_or(false);
                assert!(!same_hash, "byte {i} bit {bit:#x} went unnoticed");
            }
        }
    }
}

#[test]
fn unknown_type_is_a_clear_error() {
    let mut rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    rec.event_type = "RunExploded".into();
    let err = rec.decode_event().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown event type \"RunExploded\" (this build knows 27 types)"
    );
}

#[test]
fn newer_schema_is_a_clear_error() {
    let mut rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    rec.schema_version = SCHEMA_VERSION + 1;
    let err = rec.decode_event().unwrap_err();
    assert_eq!(
        err.to_string(),
        "RunCancelled has schema version 3, newer than the supported 2: upgrade foundry"
    );
}

#[test]
fn garbage_is_undecodable_not_a_panic() {
    assert!(RecordedEvent::decode(&[]).is_err());
    assert!(RecordedEvent::decode(&[0x99]).is_err());
    let mut bytes = record_for(&sample(), 1, Sha256Digest::ZERO)
        .encode()
        .unwrap();
    bytes.push(0);
    assert!(matches!(
        RecordedEvent::decode(&bytes),
        Err(EventError::Record(_))
    ));
    assert!(hash_record_bytes(&[0x99; 10]).is_err());
}

#[test]
fn payload_of_wrong_shape_is_a_payload_error() {
    let mut rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    rec.payload = vec![0x01];
    assert!(matches!(
        rec.decode_event(),
        Err(EventError::Payload {
            event_type: "RunCancelled",
            ..
        })
    ));
}

#[test]
fn envelope_json_has_type_and_payload() {
    let env = record_for(&sample(), 1, Sha256Digest::ZERO)
        .to_envelope()
        .unwrap();
    let json = serde_json::to_value(&env).unwrap();
    assert_eq!(json["type"], "RunCancelled");
    assert_eq!(json["payload"]["run_id"], "r1");
    assert_eq!(json["seq"], 1);
    assert_eq!(json["stream"], "run/r1");
    let back: Envelope = serde_json::from_value(json).unwrap();
    assert_eq!(back, env);
}

#[test]
fn default_streams_follow_the_kinds() {
    let e = Event::AdapterPromoted(AdapterPromoted {
        checkpoint_id: "c".into(),
        channel: "production".into(),
        previous_checkpoint_id: None,
        gates: vec![],
        evidence: vec![],
        signed_by: vec![],
        reason: String::new(),
    });
    assert_eq!(e.default_stream(), "channel/production");
}

/// Exactly the checkpoint files and the run config must travel with the
/// record; pinned inputs stay where they were pinned.
#[test]
fn stored_artifacts_are_checkpoint_files_and_run_configs() {
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    for ty in EventType::ALL.iter().copied() {
        runner
            .run(&catalog::arbitrary_of(ty), |event| {
                let named: Vec<Sha256Digest> = event
                    .stored_artifacts()
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect();
                let expected = match &event {
                    Event::CheckpointCommitted(c) => c.files.iter().map(|f| f.sha256).collect(),
                    Event::RunStarted(r) => vec![r.run_config_sha256],
                    _ => Vec::new(),
                };
                prop_assert_eq!(&named, &expected);
                prop_assert!(expected.is_empty() || ty.names_artifacts());
                let rec = record_for(&event, 1, Sha256Digest::ZERO);
                let via_statement: Vec<Sha256Digest> = rec
                    .statement
                    .stored_artifacts()
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect();
                prop_assert_eq!(via_statement, expected);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", ty.as_str()));
    }
}
