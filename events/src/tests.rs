use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn record_for(event: &Event, seq: u64, prev: Sha256Digest) -> RecordedEvent {
    RecordedEvent {
        seq,
        stream: event.default_stream(),
        stream_version: seq,
        event_id: uuid::Uuid::from_u128(seq as u128 * 7919),
        event_type: event.event_type().as_str().to_string(),
        schema_version: SCHEMA_VERSION,
        recorded_at: Timestamp(1_795_946_400_000_000_000 + seq as i64),
        actor: "tester".into(),
        causation_id: None,
        correlation_id: Some(uuid::Uuid::from_u128(42)),
        idempotency_key: Some(format!("k{seq}")),
        payload: event.encode_payload().unwrap(),
        prev_hash: prev,
        hash: Sha256Digest::ZERO,
    }
    .seal()
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
    assert_eq!(EventType::ALL.len(), 21);
    assert_eq!(EventType::parse("RunExploded"), None);
}

fn sample() -> Event {
    Event::RunCancelled(RunCancelled {
        run_id: "r1".into(),
        reason: "because".into(),
    })
}

#[test]
fn slice_hash_equals_canonical_hash_of_fields_without_hash() {
    let rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    // Independent computation: encode the 13 leading fields as a tuple.
    let fields = (
        rec.seq,
        &rec.stream,
        rec.stream_version,
        rec.event_id,
        &rec.event_type,
        rec.schema_version,
        rec.recorded_at,
        &rec.actor,
        rec.causation_id,
        rec.correlation_id,
        &rec.idempotency_key,
        serde_bytes::Bytes::new(&rec.payload),
        rec.prev_hash,
    );
    let mut input = rec.prev_hash.0.to_vec();
    input.extend(rmp_serde::to_vec(&fields).unwrap());
    assert_eq!(Sha256Digest::of(&input), rec.hash);
    assert_eq!(stored_hash(&rec.encode().unwrap()), Some(rec.hash));
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
}

#[test]
fn unknown_type_is_a_clear_error() {
    let mut rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    rec.event_type = "RunExploded".into();
    let err = rec.decode_event().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown event type \"RunExploded\" (this build knows 21 types)"
    );
}

#[test]
fn newer_schema_is_a_clear_error() {
    let mut rec = record_for(&sample(), 1, Sha256Digest::ZERO);
    rec.schema_version = SCHEMA_VERSION + 1;
    let err = rec.decode_event().unwrap_err();
    assert_eq!(
        err.to_string(),
        "RunCancelled has schema version 2, newer than the supported 1: upgrade foundry"
    );
}

#[test]
fn garbage_is_undecodable_not_a_panic() {
    assert!(RecordedEvent::decode(&[]).is_err());
    assert!(RecordedEvent::decode(&[0x9e]).is_err());
    let mut bytes = record_for(&sample(), 1, Sha256Digest::ZERO)
        .encode()
        .unwrap();
    bytes.push(0);
    assert!(matches!(
        RecordedEvent::decode(&bytes),
        Err(EventError::Record(_))
    ));
    assert!(hash_record_bytes(&[0x9e; 10]).is_err());
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
        reason: String::new(),
    });
    assert_eq!(e.default_stream(), "channel/production");
}
