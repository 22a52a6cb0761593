use std::io::Cursor;
use std::path::Path;

use crate::*;

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([seed, x as u8 * 30, y as u8 * 30]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn invoice(n: u32) -> serde_json::Value {
    serde_json::json!({
        "vendor": format!("Acme {n}"), "invoice_number": format!("INV-{n}"), "date": "2024-01-02",
        "due_date": "2024-02-01", "currency": "EUR", "subtotal": 10.0, "tax": 2.0, "total": 12.0,
        "line_items": [{"description": "Bolts", "qty": 2, "unit_price": 5.0, "amount": 10.0}]
    })
}

/// train: 2 shards × 3 rows, validation: 1 shard × 2 rows.
fn make(root: &Path) {
    std::fs::create_dir_all(root.join("data/images")).unwrap();
    let mut k = 0u32;
    for (shard, rows) in [
        ("train-00000-of-00002", 3),
        ("train-00001-of-00002", 3),
        ("validation-00000-of-00001", 2),
    ] {
        let mut lines = String::new();
        for _ in 0..rows {
            k += 1;
            let img = format!("images/{k:04}.png");
            std::fs::write(root.join("data").join(&img), png(k as u8)).unwrap();
            let layout = if k.is_multiple_of(2) {
                "invoice/classic"
            } else {
                "invoice/modern"
            };
            let row = serde_json::json!({"image": img, "doc_type": "invoice", "layout": layout, "target": invoice(k)});
            lines.push_str(&format!("{row}\n"));
        }
        std::fs::write(root.join(format!("data/{shard}.jsonl")), lines).unwrap();
    }
}

#[test]
fn same_data_same_id_and_counts() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make(a.path());
    make(b.path());
    let pa = pin_dir(a.path(), "a", None).unwrap();
    let pb = pin_dir(b.path(), "b", None).unwrap();
    assert_eq!(pa.dataset_id, pb.dataset_id);
    assert_eq!(pa.shards.len(), 3);
    assert_eq!(pa.splits["train"].rows, 6);
    assert_eq!(pa.splits["validation"].rows, 2);
    assert_eq!(pa.splits["train"].by_doc_type["invoice"], 6);
    assert_eq!(pa.splits["train"].by_layout["invoice/modern"], 3);
    let ev = pa.to_event();
    assert_eq!(ev.dataset_id, pa.dataset_id);
    assert_eq!(ev.shards[0].sha256.to_hex(), pa.shards[0].sha256);
    assert_eq!(ev.splits["validation"].rows, 2);
}

#[test]
fn one_byte_change_in_any_shard_or_image_changes_the_id() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let base = pin_dir(d.path(), "d", None).unwrap().dataset_id;
    let mut files: Vec<_> = std::fs::read_dir(d.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.extend(
        std::fs::read_dir(d.path().join("data/images"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    assert_eq!(files.len(), 3 + 8);
    for f in files {
        let orig = std::fs::read(&f).unwrap();
        let mut changed = orig.clone();
        if f.extension().unwrap() == "jsonl" {
            // Flip one digit inside a target value: still valid, different bytes.
            let pos = changed.windows(4).position(|w| w == b"12.0").unwrap();
            changed[pos] = b'3';
        } else {
            // PNG: change one byte of the trailing IEND CRC region → still one byte.
            let n = changed.len();
            changed[n - 1] ^= 1;
        }
        std::fs::write(&f, &changed).unwrap();
        match pin_dir(d.path(), "d", None) {
            Ok(p) => assert_ne!(p.dataset_id, base, "{}", f.display()),
            Err(e) => assert!(e.to_string().contains("does not decode"), "{e}"),
        }
        std::fs::write(&f, &orig).unwrap();
    }
    assert_eq!(pin_dir(d.path(), "d", None).unwrap().dataset_id, base);
}

#[test]
fn bad_rows_are_rejected_with_their_location() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let shard = d.path().join("data/validation-00000-of-00001.jsonl");
    let good = std::fs::read_to_string(&shard).unwrap();
    let first = good.lines().next().unwrap().to_string();
    let cases = [
        ("{not json", "shard data/validation-00000-of-00001.jsonl, row 2: invalid JSON: key must be a string at line 1 column 2"),
        (&first.replace("\"vendor\"", "\"seller\""), "shard data/validation-00000-of-00001.jsonl, row 2: target of invoice lacks field \"vendor\""),
        (&first.replace("\"doc_type\":\"invoice\"", "\"doc_type\":\"memo\""), "shard data/validation-00000-of-00001.jsonl, row 2: unknown doc_type \"memo\" (known: bank_statement, invoice, purchase_order, receipt)"),
        (&first.replace("0007.png", "0099.png"), "shard data/validation-00000-of-00001.jsonl, row 2: image \"images/0099.png\" not found"),
        (&first.replace("\"unit_price\"", "\"price\""), "shard data/validation-00000-of-00001.jsonl, row 2: target field line_items[0] lacks \"unit_price\""),
    ];
    for (line, want) in cases {
        std::fs::write(&shard, format!("{first}\n{line}\n")).unwrap();
        assert_eq!(pin_dir(d.path(), "d", None).unwrap_err().to_string(), want);
    }
    std::fs::write(d.path().join("data/images/0007.png"), b"not a png").unwrap();
    std::fs::write(&shard, format!("{first}\n")).unwrap();
    let e = pin_dir(d.path(), "d", None).unwrap_err().to_string();
    assert!(e.starts_with("shard data/validation-00000-of-00001.jsonl, row 1: image images/0007.png does not decode"), "{e}");
}

#[test]
fn reader_is_deterministic_resumable_and_covers_the_split() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let pin = pin_dir(d.path(), "d", None).unwrap();
    let key = |e: &Example| (e.shard.clone(), e.row);
    let all: Vec<_> = StreamReader::open(&pin, "train", 3, Some(2), Position::default())
        .unwrap()
        .map(|e| key(&e.unwrap()))
        .collect();
    assert_eq!(all.len(), 12);
    let again: Vec<_> = StreamReader::open(&pin, "train", 3, Some(2), Position::default())
        .unwrap()
        .map(|e| key(&e.unwrap()))
        .collect();
    assert_eq!(all, again);
    let mut first_epoch = all[..6].to_vec();
    first_epoch.sort();
    first_epoch.dedup();
    assert_eq!(first_epoch.len(), 6);
    let other: Vec<_> = StreamReader::open(&pin, "train", 4, Some(2), Position::default())
        .unwrap()
        .map(|e| key(&e.unwrap()))
        .collect();
    assert_ne!(all, other);
    // Resume from a serialized position after 5 examples.
    let mut r = StreamReader::open(&pin, "train", 3, Some(2), Position::default()).unwrap();
    for _ in 0..5 {
        r.next().unwrap().unwrap();
    }
    let saved = serde_json::to_string(&r.position()).unwrap();
    let pos: Position = serde_json::from_str(&saved).unwrap();
    let rest: Vec<_> = StreamReader::open(&pin, "train", 3, Some(2), pos)
        .unwrap()
        .map(|e| key(&e.unwrap()))
        .collect();
    assert_eq!(rest, all[5..].to_vec());
}

#[test]
fn reader_detects_a_shard_changed_after_pinning() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let pin = pin_dir(d.path(), "d", None).unwrap();
    std::fs::write(d.path().join("data/images/0007.png"), png(200)).unwrap();
    let results: Vec<_> = StreamReader::open(&pin, "validation", 1, Some(1), Position::default())
        .unwrap()
        .collect();
    assert_eq!(
        results.len(),
        1,
        "fails before yielding any row of the shard"
    );
    let e = results[0].as_ref().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "shard data/validation-00000-of-00001.jsonl changed since it was pinned: sha256 "
        ),
        "{e}"
    );
}

/// Builds the hub cache layout: <kind>s--ORG--NAME/{refs/main, blobs/<sha>, snapshots/<commit>/<file> → blob}.
fn hub_fixture(cache: &Path, kind: &str, files_from: &Path, commit: &str) {
    let repo = cache.join(format!("{kind}s--org--fin"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut files = Vec::new();
    walk(files_from, &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let blob = repo
            .join("blobs")
            .join(hex::encode(sha2::Sha256::digest(&bytes)));
        std::fs::write(&blob, &bytes).unwrap();
        let rel = f.strip_prefix(files_from).unwrap();
        let link = snap.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        // Relative, as the hub's caches link: ../../blobs/<sha> from the
        // snapshot's top level, one more ../ per folder below it.
        let up = "../".repeat(rel.components().count() + 1);
        let target = format!("{up}blobs/{}", blob.file_name().unwrap().to_str().unwrap());
        std::os::unix::fs::symlink(&target, &link).unwrap();
    }
}
use sha2::Digest;

#[test]
fn hf_dataset_pins_from_the_local_cache_offline() {
    let src = tempfile::tempdir().unwrap();
    make(src.path());
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    hub_fixture(cache.path(), "dataset", src.path(), commit);
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
        pin_root: None,
    };
    let local = pin_dir(src.path(), "x", None).unwrap();
    for rev in ["main", commit] {
        let p = pin_source(&format!("hf://org/fin@{rev}"), &opts).unwrap();
        assert_eq!(p.resolved_revision.as_deref(), Some(commit));
        assert_eq!(p.dataset_id, local.dataset_id);
        let n = StreamReader::open(&p, "train", 0, Some(1), Position::default())
            .unwrap()
            .count();
        assert_eq!(n, 6);
    }
    let e = pin_source("hf://org/fin@v9", &opts)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("hf://org/fin@v9: "), "{e}");
    assert_eq!(
        pin_source("hf://org@main", &opts).unwrap_err().to_string(),
        "\"hf://org@main\" is not hf://ORG/NAME@REVISION"
    );
}

fn safetensors(tensors: &[(&str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for (name, shape) in tensors {
        let n: u64 = shape.iter().product::<u64>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let h = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(vec![0u8; off as usize]);
    out
}

fn make_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures":["Idefics2ForConditionalGeneration"],"model_type":"idefics2"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.join("preprocessor_config.json"), "{}").unwrap();
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        safetensors(&[("a", &[4, 8])]),
    )
    .unwrap();
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        safetensors(&[("b", &[8]), ("c", &[2, 3])]),
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}"#).unwrap();
    std::fs::write(dir.join("README.md"), "not pinned").unwrap();
}

#[test]
fn model_pin_hashes_sharded_weights_and_detects_changes() {
    let d = tempfile::tempdir().unwrap();
    make_model(d.path());
    let opts = HubOptions::default();
    let p = pin_model(d.path().to_str().unwrap(), &opts).unwrap();
    assert_eq!(p.files.len(), 6);
    assert_eq!(p.parameters, Some(32 + 8 + 6));
    assert_eq!(p.architecture, "Idefics2ForConditionalGeneration");
    assert_eq!(p.quantization, "none");
    assert_eq!(p.to_event().files.len(), 6);
    // README is not part of the id; a weight byte is.
    std::fs::write(d.path().join("README.md"), "changed").unwrap();
    assert_eq!(
        pin_model(d.path().to_str().unwrap(), &opts)
            .unwrap()
            .model_id,
        p.model_id
    );
    verify_model(d.path(), &p).unwrap();
    let w = d.path().join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 1] = 1;
    std::fs::write(&w, bytes).unwrap();
    assert_ne!(
        pin_model(d.path().to_str().unwrap(), &opts)
            .unwrap()
            .model_id,
        p.model_id
    );
    assert!(verify_model(d.path(), &p)
        .unwrap_err()
        .to_string()
        .starts_with("shard model-00002-of-00002.safetensors changed"));
    std::fs::remove_file(d.path().join("model-00001-of-00002.safetensors")).unwrap();
    let e = pin_model(d.path().to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("shard model-00001-of-00002.safetensors named in model.safetensors.index.json is missing"), "{e}");
}

#[test]
fn hf_model_pins_from_the_local_cache_offline() {
    let src = tempfile::tempdir().unwrap();
    make_model(src.path());
    let cache = tempfile::tempdir().unwrap();
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    hub_fixture(cache.path(), "model", src.path(), commit);
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
        pin_root: None,
    };
    let p = pin_model("hf://org/fin@main", &opts).unwrap();
    assert_eq!(p.resolved_revision.as_deref(), Some(commit));
    assert_eq!(
        p.model_id,
        pin_model(src.path().to_str().unwrap(), &opts)
            .unwrap()
            .model_id
    );
}

/// A dataset whose validation shard's second row is `line`, pinned: the error.
fn pin_with_row(line: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("ds");
    make(&root);
    let shard = root.join("data/validation-00000-of-00001.jsonl");
    let good = std::fs::read_to_string(&shard).unwrap();
    let first = good.lines().next().unwrap().to_string();
    std::fs::write(&shard, format!("{first}\n{line}\n")).unwrap();
    std::fs::create_dir_all(d.path().join("outside")).unwrap();
    std::fs::write(d.path().join("outside/secret.png"), png(9)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(
            d.path().join("outside/secret.png"),
            root.join("data/images/link-abs.png"),
        )
        .unwrap();
        symlink(
            "../../../outside/secret.png",
            root.join("data/images/link-rel.png"),
        )
        .unwrap();
        symlink(d.path().join("outside"), root.join("data/images/dir")).unwrap();
    }
    pin_dir(&root, "d", None).unwrap_err().to_string()
}

fn row_with_image(image: serde_json::Value) -> String {
    serde_json::json!({"image": image, "doc_type": "invoice", "layout": "x", "target": invoice(1)})
        .to_string()
}

#[test]
fn a_row_cannot_reach_outside_the_dataset_root_nor_tell_what_is_there() {
    let want = |name: &str| {
        format!(
            "shard data/validation-00000-of-00001.jsonl, row 2: image {name:?} is outside the dataset root"
        )
    };
    let mut cases: Vec<(serde_json::Value, String)> = vec![
        (
            "../../../outside/secret.png".into(),
            want("../../../outside/secret.png"),
        ),
        ("/etc/passwd".into(), want("/etc/passwd")),
        ("/etc/no-such-file".into(), want("/etc/no-such-file")),
        (
            serde_json::json!({"path": "/etc/passwd"}),
            want("/etc/passwd"),
        ),
    ];
    if cfg!(unix) {
        cases.push(("images/link-abs.png".into(), want("images/link-abs.png")));
        cases.push(("images/link-rel.png".into(), want("images/link-rel.png")));
        cases.push((
            "images/dir/secret.png".into(),
            want("images/dir/secret.png"),
        ));
    }
    for (image, expected) in cases {
        assert_eq!(
            pin_with_row(&row_with_image(image.clone())),
            expected,
            "{image}"
        );
    }
}

#[test]
fn oversized_rows_targets_and_images_are_refused_before_they_cost_memory() {
    let shard = "shard data/validation-00000-of-00001.jsonl, row 2";
    // A 50 MB target.
    let mut big = invoice(1);
    big["vendor"] = serde_json::Value::String("x".repeat(50 << 20));
    let line = serde_json::json!({"image": "images/0007.png", "doc_type": "invoice", "layout": "x", "target": big.to_string()}).to_string();
    let e = pin_with_row(&line);
    assert!(
        e.starts_with(&format!("{shard}: the row is")) && e.contains("more than 1048576"),
        "{e}"
    );
    let mut big = invoice(1);
    big["vendor"] = serde_json::Value::String("x".repeat(100 << 10));
    let e = pin_with_row(&row_with_image_target("images/0007.png", big));
    assert!(
        e.contains("the target is") && e.contains("more than 65536"),
        "{e}"
    );
    // A 12000 x 12000 greyscale PNG: small on disk, 144 MB decoded.
    let mut bomb = Cursor::new(Vec::new());
    image::GrayImage::new(12_000, 12_000)
        .write_to(&mut bomb, image::ImageFormat::Png)
        .unwrap();
    assert!(bomb.get_ref().len() < 1 << 20);
    let e = crate::decode_image(bomb.get_ref()).unwrap_err();
    assert_eq!(e, "it is 12000 x 12000 pixels, more than 8192 a side");
}

fn row_with_image_target(image: &str, target: serde_json::Value) -> String {
    serde_json::json!({"image": image, "doc_type": "invoice", "layout": "x", "target": target})
        .to_string()
}

#[test]
fn a_model_directory_is_a_jail_too() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("m");
    make_model(&dir);
    std::fs::write(
        d.path().join("outside.safetensors"),
        safetensors(&[("x", &[1])]),
    )
    .unwrap();
    let opts = HubOptions::default();
    // The index names a shard outside the directory.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"../outside.safetensors"}}"#,
    )
    .unwrap();
    let e = pin_model(dir.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"../outside.safetensors\" leads outside"),
        "{e}"
    );
    #[cfg(unix)]
    {
        // config.json linked to a file outside.
        make_model(&dir);
        std::fs::remove_file(dir.join("config.json")).unwrap();
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        std::os::unix::fs::symlink(d.path().join("config.json"), dir.join("config.json")).unwrap();
        let e = pin_model(dir.to_str().unwrap(), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"config.json\" leads outside"), "{e}");
    }
}

#[test]
fn rows_read_alone_are_re_verified_and_only_touched_shards_are_read() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let pin = pin_dir(d.path(), "d", None).unwrap();
    let index = SplitIndex::open(&pin, "train").unwrap();
    assert_eq!((index.len(), index.shard_count()), (6, 2));
    // The second shard's image is altered: rows of the first still read.
    std::fs::write(d.path().join("data/images/0005.png"), png(250)).unwrap();
    for i in 0..3 {
        let e = index.get(i).unwrap();
        assert_eq!(
            (e.shard.as_str(), e.row),
            ("data/train-00000-of-00002.jsonl", i + 1)
        );
    }
    // The second shard fails as a whole, before any of its rows is used.
    let e = index.get(5).unwrap_err().to_string();
    assert!(
        e.starts_with("shard data/train-00001-of-00002.jsonl changed since it was pinned: sha256 "),
        "{e}"
    );
    assert!(index.get(3).is_err(), "the failed check is kept");
    // A row altered after its shard was checked fails when it is read.
    std::fs::write(d.path().join("data/images/0002.png"), png(251)).unwrap();
    let e = index.get(1).unwrap_err().to_string();
    assert_eq!(
        e,
        "shard data/train-00000-of-00002.jsonl, row 2 changed since it was pinned: its bytes differ from the pinned ones"
    );
    assert!(index.get(0).is_ok() && index.get(2).is_ok());
    // Positions past the end are refused.
    assert_eq!(
        index.get(6).unwrap_err().to_string(),
        "row 6 is outside the split (6 rows)"
    );
}

#[test]
fn pinning_reports_progress_and_a_shard_changed_mid_read_is_refused() {
    let d = tempfile::tempdir().unwrap();
    make(d.path());
    let seen = std::sync::Mutex::new(Vec::new());
    let pin = pin_dir_with(d.path(), "d", None, &|p| seen.lock().unwrap().push(p)).unwrap();
    let seen = seen.into_inner().unwrap();
    let last = *seen.last().unwrap();
    let total: u64 = pin.shards.iter().map(|s| s.bytes).sum();
    assert_eq!((last.bytes, last.shards_done, last.shards), (total, 3, 3));
    assert!(
        seen.windows(2).all(|w| w[0].bytes <= w[1].bytes),
        "{seen:?}"
    );
    // A row with a line break in CRLF form hashes as it is on disk.
    let shard = d.path().join("data/validation-00000-of-00001.jsonl");
    let crlf = std::fs::read_to_string(&shard)
        .unwrap()
        .replace('\n', "\r\n");
    std::fs::write(&shard, &crlf).unwrap();
    let again = pin_dir(d.path(), "d", None).unwrap();
    assert_ne!(again.dataset_id, pin.dataset_id);
    assert_eq!(again.splits["validation"].rows, 2);
    let index = SplitIndex::open(&again, "validation").unwrap();
    assert_eq!(index.get(1).unwrap().row, 2);
}
