//! `ledger serve`'s request handling: any subject and payload a NATS client
//! can send gets a reply (an error reply for garbage), never a panic, on a
//! real ledger that holds a genesis. The first byte picks the operation.
#![no_main]

use std::sync::OnceLock;

use foundry_events::Role;
use foundry_ledger::{Home, Identity, Ledger};
use libfuzzer_sys::fuzz_target;

const OPS: &[&str] = &[
    foundry_bus::wire::ops::APPEND,
    foundry_bus::wire::ops::READ_STREAM,
    foundry_bus::wire::ops::READ_TYPE,
    foundry_bus::wire::ops::READ_RAW,
    foundry_bus::wire::ops::GET,
    foundry_bus::wire::ops::STREAM_VERSION,
    foundry_bus::wire::ops::HEAD,
    "foundry.api.unknown",
];

struct World {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Home::at(dir.path().join("home")).init().expect("ledger");
        let root = Identity::generate("root").expect("key");
        ledger
            .init_genesis(&root, &[Role::Admin, Role::Operator], &[])
            .expect("genesis");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        World {
            _dir: dir,
            ledger,
            rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((op, payload)) = data.split_first() else {
        return;
    };
    let w = world();
    let subject = OPS[*op as usize % OPS.len()];
    let reply = w
        .rt
        .block_on(foundry_bus::handle_request(&w.ledger, subject, payload, 64 * 1024));
    assert!(!reply.is_empty(), "an empty reply to {subject}");
});
