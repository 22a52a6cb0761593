//! Signatures, the key registry and authorization, at append and in verify.

use super::*;
use crate::trust::{Conditions, Grant, SignedBatch};
use foundry_events::{
    EvalScored, KeyRegistered, KeyRevoked, RunStarted, Sha256Digest, Signature, Timestamp,
};

fn fresh_empty() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Home::at(dir.path()).init().unwrap();
    (dir, ledger)
}

/// A ledger whose root is admin only, with an operator `alice`, an
/// evaluator `eval` and a dispatcher `modal`.
fn org() -> (
    tempfile::TempDir,
    Ledger,
    Identity,
    Identity,
    Identity,
    Identity,
) {
    let (d, l) = fresh_empty();
    let admin = Identity::generate("admin").unwrap();
    let alice = Identity::generate("alice").unwrap();
    let eval = Identity::generate("eval").unwrap();
    let modal = Identity::generate("modal").unwrap();
    l.init_genesis(
        &admin,
        &[Role::Admin],
        &[
            Grant::of(&alice, &[Role::Operator], "a person"),
            Grant::of(&eval, &[Role::Evaluator], "the evaluator"),
            Grant::of(&modal, &[Role::Dispatcher], "the dispatcher"),
        ],
    )
    .unwrap();
    (d, l, admin, alice, eval, modal)
}

fn refusal(r: Result<AppendOutcome>) -> String {
    match r {
        Err(LedgerError::Unauthorized(m)) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(o) => panic!("appended seq {}", o.events[0].seq),
    }
}

fn one(e: impl Into<Event>) -> AppendRequest {
    AppendRequest::new(vec![NewEvent::new(e)])
}

fn scored(eval: &str) -> EvalScored {
    EvalScored {
        eval_id: eval.into(),
        checkpoint_id: Some("c".into()),
        run_id: Some("r".into()),
        model_id: "m".into(),
        dataset_id: "d".into(),
        split: "test".into(),
        split_sha256: Sha256Digest::of(b"s"),
        eval_spec_sha256: Sha256Digest::of(b"e"),
        examples: 100,
        metrics: BTreeMap::new(),
        breakdown: BTreeMap::new(),
        latency_ms_mean: 1.0,
        throughput_docs_per_s: 1.0,
        code: Default::default(),
        device: Default::default(),
    }
}

fn register(
    id: &Identity,
    roles: &[&str],
    scope: Option<&str>,
    expires_at: Option<Timestamp>,
) -> KeyRegistered {
    KeyRegistered {
        name: id.name().into(),
        public_key: id.public_key().into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        run_scope: scope.map(str::to_string),
        expires_at,
        note: String::new(),
    }
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64,
    )
}

/// Writes a batch signed by `sign_with` but naming `signer`'s key, past
/// every check (a forger with write access to the store).
fn forge(l: &Ledger, signer: &Identity, sign_with: &Identity, events: Vec<Event>) -> u64 {
    let req = AppendRequest::new(events.into_iter().map(NewEvent::new).collect());
    let mut batch = signer.sign(req).unwrap();
    let (message, encoded) = batch.message();
    batch.signature = sign_with.sign_message(&message);
    let head = l.head();
    let records = l
        .place(head, Timestamp(head.recorded_at + 1), batch, encoded)
        .unwrap();
    l.append_verbatim(&records).unwrap();
    head.seq + 1
}

#[test]
fn the_first_event_must_be_the_roots_own_registration() {
    let (_d, l) = fresh_empty();
    let a = Identity::generate("a").unwrap();
    let b = Identity::generate("b").unwrap();
    let e = refusal(l.append_as(&a, one(requested("r"))));
    assert!(
        e.contains("first event of a ledger must be its root key"),
        "{e}"
    );
    let e = refusal(l.append_as(&a, one(register(&b, &["admin"], None, None))));
    assert!(e.contains("must register itself"), "{e}");
    let e = refusal(l.append_as(&a, one(register(&a, &["operator"], None, None))));
    assert!(e.contains("admin role"), "{e}");
    assert_eq!(l.head().seq, 0);
    l.init_genesis(&a, &[Role::Admin], &[]).unwrap();
    assert_eq!(l.registry().root(), Some(a.public_key()));
    // Nobody registers themselves after the genesis.
    let e = refusal(l.append_as(&b, one(register(&b, &["admin"], None, None))));
    assert!(e.contains("not a registered key"), "{e}");
}

#[test]
fn roles_decide_what_a_key_may_append() {
    let (_d, l, admin, alice, eval, _) = org();
    l.append_as(&alice, one(requested("r"))).unwrap();
    let e = refusal(l.append_as(&alice, one(scored("e1"))));
    assert!(
        e.contains("\"alice\" (roles: operator) may not append EvalScored")
            && e.contains("role evaluator"),
        "{e}"
    );
    l.append_as(&eval, one(scored("e1"))).unwrap();
    let e = refusal(l.append_as(&alice, one(register(&alice, &["admin"], None, None))));
    assert!(e.contains("may not append KeyRegistered"), "{e}");
    let e = refusal(l.append_as(&admin, one(requested("x"))));
    assert!(e.contains("roles: admin"), "{e}");
    // A stranger, and a registered key claiming another name.
    let mallory = Identity::generate("mallory").unwrap();
    let e = refusal(l.append_as(&mallory, one(requested("x"))));
    assert!(e.contains("not a registered key"), "{e}");
    let posing = Identity::from_seed("eval", alice.seed()).unwrap();
    let e = refusal(l.append_as(&posing, one(scored("e2"))));
    assert!(
        e.contains("is registered as \"alice\", not \"eval\""),
        "{e}"
    );
    // An event in another stream than its own.
    let mut req = one(requested("r2"));
    req.events[0].stream = Some("channel/production".into());
    let e = refusal(l.append_as(&alice, req));
    assert!(e.contains("belongs in stream run/r2"), "{e}");
    assert!(l.verify().unwrap().is_ok());
}

#[test]
fn a_revoked_key_is_refused_after_its_revocation_and_valid_before() {
    let (_d, l, admin, alice, _, _) = org();
    let before = l.append_as(&alice, one(requested("r"))).unwrap().events[0].seq;
    let revoked = l
        .append_as(
            &admin,
            one(KeyRevoked {
                name: "alice".into(),
                public_key: alice.public_key().into(),
                reason: "left".into(),
            }),
        )
        .unwrap()
        .events[0]
        .seq;
    let e = refusal(l.append_as(&alice, one(requested("r3"))));
    assert!(e.contains(&format!("was revoked at seq {revoked}")), "{e}");
    assert!(l.verify().unwrap().is_ok(), "seq {before} stays valid");
    // Revoked keys stay revoked; the name can go to a new key.
    let e = refusal(l.append_as(&admin, one(register(&alice, &["operator"], None, None))));
    assert!(e.contains("stays revoked"), "{e}");
    let alice2 = Identity::generate("alice").unwrap();
    l.append_as(&admin, one(register(&alice2, &["operator"], None, None)))
        .unwrap();
    l.append_as(&alice2, one(requested("r4"))).unwrap();
    // A record forged into the store after the revocation is named by verify.
    let at = forge(&l, &alice, &alice, vec![requested("forged")]);
    let v = l.verify().unwrap().violation.unwrap();
    assert_eq!(v.seq, at, "{v}");
    assert!(v.to_string().contains("was revoked at seq"), "{v}");
}

#[test]
fn verify_names_a_forged_record_whatever_was_forged() {
    // Evidence signed by a key without the evaluator role.
    let (_d, l, _, alice, eval, _) = org();
    l.append_as(&eval, one(scored("ok"))).unwrap();
    let at = forge(&l, &alice, &alice, vec![Event::EvalScored(scored("fake"))]);
    let v = l.verify().unwrap().violation.unwrap();
    assert_eq!(v.seq, at);
    assert!(matches!(v.kind, ViolationKind::Unauthorized(_)), "{v}");
    assert!(v.to_string().contains("may not append EvalScored"), "{v}");

    // A batch that names the evaluator's key but is signed by another.
    let (_d, l, _, alice, eval, _) = org();
    let at = forge(&l, &eval, &alice, vec![Event::EvalScored(scored("fake"))]);
    l.append_as(&alice, one(requested("later"))).unwrap();
    let v = l.verify().unwrap().violation.unwrap();
    assert_eq!(v.seq, at);
    assert!(matches!(v.kind, ViolationKind::BadSignature { .. }), "{v}");
}

#[test]
fn signatures_bind_every_statement_and_the_conditions() {
    let (_d, l, _, alice, _, _) = org();
    let req = AppendRequest::new(vec![
        NewEvent::new(requested("a")),
        NewEvent::new(requested("b")),
    ])
    .expect("run/a", ExpectedVersion::NoStream);
    let good = alice.sign(req).unwrap();
    // A payload changed after signing.
    let mut bad = good.clone();
    bad.statements[1].payload = requested("c").encode_payload().unwrap();
    bad.statements[1].stream = "run/c".into();
    let e = refusal(l.append(bad));
    assert!(e.contains("signature of the batch does not hold"), "{e}");
    // The expectations dropped.
    let mut bad = good.clone();
    bad.conditions = Conditions::Expect(vec![]);
    assert!(refusal(l.append(bad)).contains("does not hold"));
    // One statement taken out of the batch.
    let mut bad = good.clone();
    bad.statements.pop();
    assert!(refusal(l.append(bad)).contains("does not hold"));
    // Relayed as if appended elsewhere: only run-scoped keys' batches.
    let mut bad = good.clone();
    bad.conditions = Conditions::Relayed(good.conditions.digest());
    let e = refusal(l.append(bad));
    assert!(
        e.contains("only batches of run-scoped keys can be relayed"),
        "{e}"
    );
    // A forged signature of the right length.
    let mut bad = good.clone();
    bad.signature = Signature([7; 64]);
    assert!(refusal(l.append(bad)).contains("does not hold"));
    assert_eq!(l.head().seq, 4);
    l.append(good.clone()).unwrap();
    // Replaying the signed batch appends nothing, even once its stream moved.
    assert!(l.append(good).unwrap().duplicate);
    assert_eq!(l.head().seq, 6);
}

#[test]
fn dispatchers_register_only_scoped_expiring_trainer_keys() {
    let (_d, l, admin, _, _, modal) = org();
    let c = Identity::generate("modal:r1").unwrap();
    let soon = Timestamp(now().0 + 3_600_000_000_000);
    let e = refusal(l.append_as(&modal, one(register(&c, &["trainer"], None, Some(soon)))));
    assert!(e.contains("scoped to one run"), "{e}");
    let e = refusal(l.append_as(
        &modal,
        one(register(&c, &["operator"], Some("r1"), Some(soon))),
    ));
    assert!(e.contains("role trainer"), "{e}");
    let e = refusal(l.append_as(&modal, one(register(&c, &["trainer"], Some("r1"), None))));
    assert!(e.contains("expire within 30 days"), "{e}");
    let far = Timestamp(now().0 + 60 * 24 * 3_600_000_000_000);
    assert!(refusal(l.append_as(
        &modal,
        one(register(&c, &["trainer"], Some("r1"), Some(far)))
    ))
    .contains("30 days"));
    l.append_as(
        &modal,
        one(register(&c, &["trainer"], Some("r1"), Some(soon))),
    )
    .unwrap();
    // The container's key works in its run only.
    let started = |run: &str| RunStarted {
        run_id: run.into(),
        runner_id: "modal".into(),
        host: Default::default(),
        device: Default::default(),
        code: Default::default(),
        resolved_config: serde_json::json!({}),
        run_config_sha256: Sha256Digest::ZERO,
        env: BTreeMap::new(),
        total_steps: 1,
    };
    l.append_as(&c, one(started("r1"))).unwrap();
    let e = refusal(l.append_as(&c, one(started("r2"))));
    assert!(
        e.contains("scoped to run r1 and may not append to run/r2"),
        "{e}"
    );
    // Its recorded batches can be relayed (a container's outbox).
    let out = l.append_as(&c, one(metrics("r1", 1))).unwrap();
    let relay = SignedBatch::relay(&out.events).unwrap();
    let mut again = relay.clone();
    again.statements[0].idempotency_key = Some("other".into());
    assert!(refusal(l.append(again)).contains("does not hold"));
    // An expired key is refused.
    let brief = Identity::generate("modal:r9").unwrap();
    let t = Timestamp(now().0 + 5_000_000);
    l.append_as(
        &modal,
        one(register(&brief, &["trainer"], Some("r9"), Some(t))),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let e = refusal(l.append_as(&brief, one(started("r9"))));
    assert!(e.contains("expired at"), "{e}");
    // A dispatcher revokes scoped keys only; the last admin stays.
    l.append_as(
        &modal,
        one(KeyRevoked {
            name: c.name().into(),
            public_key: c.public_key().into(),
            reason: "job over".into(),
        }),
    )
    .unwrap();
    let e = refusal(l.append_as(
        &admin,
        one(KeyRevoked {
            name: "admin".into(),
            public_key: admin.public_key().into(),
            reason: "oops".into(),
        }),
    ));
    assert!(e.contains("last admin key"), "{e}");
    assert!(l.verify().unwrap().is_ok());
}

#[test]
fn names_bind_to_one_key_until_revoked() {
    let (_d, l, admin, alice, _, _) = org();
    let other = Identity::generate("alice").unwrap();
    let e = refusal(l.append_as(&admin, one(register(&other, &["operator"], None, None))));
    assert!(e.contains("belongs to key"), "{e}");
    let e = refusal(l.append_as(
        &admin,
        one(KeyRegistered {
            name: "bob".into(),
            ..register(&alice, &["operator"], None, None)
        }),
    ));
    assert!(e.contains("already registered as \"alice\""), "{e}");
    // Roles change by registering the same key again.
    l.append_as(
        &admin,
        one(register(&alice, &["operator", "evaluator"], None, None)),
    )
    .unwrap();
    l.append_as(&alice, one(scored("now-allowed"))).unwrap();
    assert!(l.verify().unwrap().is_ok());
}

#[test]
fn a_history_forged_under_another_root_is_refused_once_the_root_is_named() {
    let (d, real) = fresh();
    put(&real, one(requested("r"))).unwrap();
    // The forger rebuilds everything from scratch under a key of their own.
    let (_d2, fake) = fresh_empty();
    let forger = Identity::generate("root").unwrap();
    fake.init_genesis(&forger, Role::ALL, &[]).unwrap();
    fake.append_as(&forger, one(Event::EvalScored(scored("perfect"))))
        .unwrap();
    let path = d.path().join("forged.export");
    fake.export(&path, "2026-12-02T00:00:00Z").unwrap();
    let s = verify_export(&path, None).unwrap();
    assert_eq!(s.root.as_deref(), Some(forger.public_key()));
    let e = verify_export(&path, Some(root().public_key()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("seq 1:") && e.contains("not the trusted root"),
        "{e}"
    );
    let dst = Home::at(d.path().join("copy")).init().unwrap();
    assert!(dst.import(&path, Some(root().public_key())).is_err());
    assert_eq!(dst.head().seq, 0);
    let r = real.verify_trusting(Some(forger.public_key())).unwrap();
    assert!(matches!(
        r.violation.map(|v| v.kind),
        Some(ViolationKind::UntrustedRoot { .. })
    ));
}

#[test]
fn an_incomplete_batch_at_the_end_is_named() {
    let (_d, l) = fresh();
    let out = put(
        &l,
        AppendRequest::new((0..3).map(|i| NewEvent::new(metrics("a", i))).collect()),
    )
    .unwrap();
    let first = out.events[0].seq;
    let (at, recs) = super::chunk_records(&l, first);
    super::put_chunk(&l, at, &recs[..2]);
    // Keep the head consistent with the cut so only the batch is wrong.
    let head = Head {
        seq: first + 1,
        hash: out.events[1].hash,
        recorded_at: out.events[1].recorded_at.0,
    };
    l.raw_tree()
        .insert(crate::layout::HEAD, head.encode().as_slice())
        .unwrap();
    let v = l.verify().unwrap().violation.unwrap();
    assert_eq!(v.seq, first, "{v}");
    assert!(v.to_string().contains("ends after 2 of them"), "{v}");
}

#[test]
fn precheck_holds_for_registered_signers_only_and_appends_nothing() {
    let (_d, l, admin, alice, _, _) = org();
    let head = l.head().seq;
    let batch = alice.sign(one(requested("r")).idempotent("k")).unwrap();
    l.precheck(&batch).unwrap();
    assert_eq!(l.head().seq, head, "nothing appended");
    // Unregistered, even under a registered name.
    let mallory = Identity::generate("alice").unwrap();
    let forged = mallory.sign(one(requested("r")).idempotent("k")).unwrap();
    let e = match l.precheck(&forged) {
        Err(LedgerError::Unauthorized(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(e.contains("not a registered key"), "{e}");
    // Registered, but not allowed to append this type (alice is an operator).
    let not_hers = alice.sign(one(scored("e")).idempotent("k2")).unwrap();
    assert!(matches!(
        l.precheck(&not_hers),
        Err(LedgerError::Unauthorized(m)) if m.contains("EvalScored")
    ));
    // A signature that does not hold.
    let mut tampered = batch.clone();
    tampered.signature = Signature([7; 64]);
    assert!(matches!(
        l.precheck(&tampered),
        Err(LedgerError::Unauthorized(_))
    ));
    // Revoked.
    l.append_as(
        &admin,
        one(KeyRevoked {
            name: "alice".into(),
            public_key: alice.public_key().into(),
            reason: "left".into(),
        }),
    )
    .unwrap();
    assert!(
        matches!(l.precheck(&batch), Err(LedgerError::Unauthorized(m)) if m.contains("revoked"))
    );
}
