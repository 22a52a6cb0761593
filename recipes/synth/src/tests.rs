use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use foundry_datasets::{pin_dir, Position, StreamReader};

use crate::*;

/// Every file under `dir`, relative path → bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Small standard pages keep the tests fast; the drawing code is the same.
fn small(seed: u64, count: u64) -> SynthConfig {
    let mut c = SynthConfig::new(Profile::Standard, seed, count);
    c.width = 384;
    c.height = 496;
    c.font_px = 9.0;
    c
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let sa = generate(&small(7, 12), a.path()).unwrap();
    let sb = generate(&small(7, 12), b.path()).unwrap();
    generate(&small(8, 12), c.path()).unwrap();
    assert_eq!(sa, sb);
    assert_eq!(sa.documents, 12);
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 12 + sa.shards.len());
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
    // One thread or many: the same bytes.
    let d = tempfile::tempdir().unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| generate(&small(7, 12), d.path()).unwrap());
    assert_eq!(files(d.path()), fa);
    // Document i does not depend on the count.
    let doc = document(&small(7, 40), 5).unwrap();
    let img = format!("data/images/{}/0000005.png", doc.split);
    assert_eq!(fa[Path::new(&img)], doc.png);
}

#[test]
fn everything_written_is_valid_under_the_schema_in_both_formats() {
    let j = tempfile::tempdir().unwrap();
    let p = tempfile::tempdir().unwrap();
    let mut cfg = small(3, 24);
    cfg.shard_rows = 7;
    let sj = generate(&cfg, j.path()).unwrap();
    cfg.format = Format::Parquet;
    let sp = generate(&cfg, p.path()).unwrap();
    assert_eq!(sj.splits, sp.splits);
    assert!(sj.shards.iter().all(|s| s.ends_with(".jsonl")));
    assert!(sp.shards.iter().all(|s| s.ends_with(".parquet")));
    assert!(
        sj.shards
            .contains(&"data/train-00000-of-00003.jsonl".to_string()),
        "{:?}",
        sj.shards
    );
    let pj = pin_dir(j.path(), "j", None).unwrap();
    let pp = pin_dir(p.path(), "p", None).unwrap();
    for (split, n) in &sj.splits {
        assert_eq!(pj.splits[split].rows, *n);
        assert_eq!(pp.splits[split].rows, *n);
    }
    assert_ne!(pj.dataset_id, pp.dataset_id);
    // Same documents through the streaming reader, whatever the format.
    let read = |pin: &foundry_datasets::DatasetPin| {
        let mut v: Vec<_> = StreamReader::open(pin, "train", 1, Some(1), Position::default())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.layout, e.target.to_string(), e.image)
            })
            .collect();
        v.sort();
        v
    };
    let (rj, rp) = (read(&pj), read(&pp));
    assert_eq!(rj.len() as u64, sj.splits["train"]);
    assert_eq!(rj, rp);
    // Every target has exactly the fields of its type, as the datasets schema says.
    for (t, fields) in foundry_datasets::schema::DOC_TYPES {
        assert_eq!(DocType::parse(t).unwrap().fields(), *fields);
    }
    for (_, target, _) in &rj {
        let v: serde_json::Value = serde_json::from_str(target).unwrap();
        assert!(v.as_object().unwrap().len() >= 8, "{v}");
    }
}

#[test]
fn tiny_profile_writes_a_narrowed_schema_and_short_printed_values() {
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::new(Profile::Tiny, 11, 60);
    let s = generate(&cfg, d.path()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("foundry_schema.json")).unwrap())
            .unwrap();
    assert_eq!(
        schema,
        serde_json::json!({"invoice": ["invoice_number", "date", "total"]})
    );
    let pin = pin_dir(d.path(), "d", None).unwrap();
    assert_eq!(pin.splits.values().map(|c| c.rows).sum::<u64>(), 60);
    assert_eq!(s.layouts.len(), 4, "{:?}", s.layouts);
    for split in s.splits.keys() {
        for e in StreamReader::open(&pin, split, 0, Some(1), Position::default()).unwrap() {
            let e = e.unwrap();
            let t = e.target.as_object().unwrap();
            assert_eq!(t.len(), 3);
            let num = t["invoice_number"].as_str().unwrap();
            assert!(
                num.len() == 5 && num.bytes().all(|b| b.is_ascii_digit()),
                "{num}"
            );
            let date = t["date"].as_str().unwrap();
            assert!(
                date.len() == 10 && &date[4..5] == "-" && &date[7..8] == "-",
                "{date}"
            );
            let total = t["total"].as_str().unwrap();
            let (u, c) = total.split_once('.').unwrap();
            assert!(
                u.bytes().all(|b| b.is_ascii_digit()) && c.len() == 2,
                "{total}"
            );
            let img = image::load_from_memory(&e.image).unwrap();
            assert_eq!((img.width(), img.height()), (160, 96));
        }
    }
}

#[test]
fn held_out_layouts_fill_the_test_split_alone() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(Profile::Tiny, 2, 80);
    cfg.holdout_layouts = vec!["invoice-d".into()];
    let s = generate(&cfg, d.path()).unwrap();
    let pin = pin_dir(d.path(), "d", None).unwrap();
    let test = &pin.splits["test"];
    assert_eq!(test.by_layout.keys().collect::<Vec<_>>(), ["invoice-d"]);
    assert_eq!(test.rows, s.layouts["invoice-d"]);
    assert!(!pin.splits["train"].by_layout.contains_key("invoice-d"));
    assert!(pin.splits["train"].rows > 0);
}

#[test]
fn every_type_and_family_is_drawn_and_filters_apply() {
    let mut cfg = SynthConfig::new(Profile::Tiny, 5, 0);
    cfg.types = DocType::ALL.to_vec();
    let fams = cfg.families();
    let mut seen = BTreeMap::new();
    for i in 0..400 {
        *seen.entry(cfg.plan(&fams, i).family.name).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 16, "{seen:?}");
    for t in DocType::ALL {
        assert_eq!(layout_families(t).len(), 4);
    }
    cfg.types = vec![DocType::Receipt, DocType::Invoice];
    cfg.layouts = vec![
        "invoice-b".into(),
        "receipt-c".into(),
        "bank_statement-a".into(),
    ];
    let fams = cfg.families();
    let names: std::collections::BTreeSet<_> =
        (0..100).map(|i| cfg.plan(&fams, i).family.name).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["invoice-b", "receipt-c"]
    );
}

#[test]
fn bad_configs_are_rejected_with_the_setting_and_reason() {
    type Change = Box<dyn Fn(&mut SynthConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c: &mut SynthConfig| c.types.clear()), "types: no document type selected"),
        (
            Box::new(|c: &mut SynthConfig| c.layouts = vec!["invoice-z".into()]),
            "layouts: unknown layout family \"invoice-z\" (known: invoice-a, invoice-b, invoice-c, invoice-d, receipt-a, receipt-b, receipt-c, receipt-d, bank_statement-a, bank_statement-b, bank_statement-c, bank_statement-d, purchase_order-a, purchase_order-b, purchase_order-c, purchase_order-d)",
        ),
        (
            Box::new(|c: &mut SynthConfig| c.layouts = vec!["receipt-a".into()]),
            "layouts: none of receipt-a belongs to the selected types (invoice)",
        ),
        (
            Box::new(|c: &mut SynthConfig| c.fields = Some(vec!["iban".into()])),
            "fields: \"iban\" is not a field of any selected type",
        ),
        (
            Box::new(|c: &mut SynthConfig| c.fields = Some(vec!["total".into(), "line_items".into()])),
            "fields: the tiny profile draws scalar fields only, not \"line_items\"",
        ),
        (Box::new(|c: &mut SynthConfig| c.width = 8), "size: 8x96 is outside 16..=8192 pixels"),
        (Box::new(|c: &mut SynthConfig| c.noise = 2.0), "noise: 2 is outside 0..=1"),
        (Box::new(|c: &mut SynthConfig| c.split_weights = [0, 0, 0]), "split_weights: all zero"),
        (Box::new(|c: &mut SynthConfig| c.shard_rows = 0), "shard_rows: must be at least 1"),
    ];
    for (change, want) in cases {
        let mut c = SynthConfig::new(Profile::Tiny, 1, 1);
        change(&mut c);
        assert_eq!(c.validate().unwrap_err().to_string(), want);
    }
    assert_eq!(
        DocType::parse("memo").unwrap_err().to_string(),
        "unknown document type \"memo\" (known: invoice, receipt, bank_statement, purchase_order)"
    );
    assert_eq!(
        Profile::parse("huge").unwrap_err().to_string(),
        "unknown profile \"huge\" (known: standard, tiny)"
    );
}

#[test]
fn with_text_writes_the_transcription_and_a_centre_per_character() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(Profile::Tiny, 9, 24);
    cfg.with_text = true;
    generate(&cfg, d.path()).unwrap();
    let mut rows = Vec::new();
    for s in ["train", "validation", "test"] {
        let p = d.path().join(format!("data/{s}-00000-of-00001.jsonl"));
        if let Ok(t) = std::fs::read_to_string(&p) {
            rows.extend(
                t.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
    }
    assert_eq!(rows.len(), 24);
    for r in &rows {
        let text = r["text"].as_str().unwrap();
        // Every target value is printed, so the transcription contains it.
        for v in r["target"].as_object().unwrap().values() {
            assert!(text.contains(v.as_str().unwrap()), "{v} not in {text:?}");
        }
        let centres = r["centres"].as_array().unwrap();
        assert_eq!(centres.len(), text.chars().filter(|c| *c != '\n').count());
        // Characters of one line go left to right on one height, inside the page.
        let mut k = 0;
        for line in text.split('\n') {
            let xy: Vec<(i64, i64)> = centres[k..k + line.chars().count()]
                .iter()
                .map(|c| (c[0].as_i64().unwrap(), c[1].as_i64().unwrap()))
                .collect();
            k += xy.len();
            assert!(
                xy.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 == w[0].1),
                "{line:?} {xy:?}"
            );
            assert!(xy
                .iter()
                .all(|(x, y)| (0..160).contains(x) && (0..96).contains(y)));
        }
    }
    // Without the flag the rows are as before.
    let plain = tempfile::tempdir().unwrap();
    cfg.with_text = false;
    generate(&cfg, plain.path()).unwrap();
    let t = std::fs::read_to_string(plain.path().join("data/train-00000-of-00001.jsonl")).unwrap();
    assert!(!t.contains("\"text\"") && !t.contains("centres"));
}

#[test]
fn free_arrangement_varies_order_and_labels_and_never_uses_a_d_family_label() {
    let mut cfg = SynthConfig::new(Profile::Tiny, 4, 200);
    cfg.types = vec![DocType::Invoice];
    cfg.with_text = true;
    cfg.free_arrangement = true;
    let mut first_lines = std::collections::BTreeSet::new();
    let mut value_first = 0;
    let mut unlabelled = 0;
    for i in 0..cfg.count {
        let d = document(&cfg, i).unwrap();
        assert_eq!(d.layout, "invoice-free");
        let lines: Vec<&str> = d.text.split('\n').collect();
        let target = d.target.as_object().unwrap();
        for v in target.values() {
            assert!(
                d.text.contains(v.as_str().unwrap()),
                "{v} not in {:?}",
                d.text
            );
        }
        // Which field comes first varies from card to card.
        let first = target
            .iter()
            .min_by_key(|(_, v)| d.text.find(v.as_str().unwrap()))
            .map(|(k, _)| k.clone())
            .unwrap();
        first_lines.insert(first);
        for l in &lines {
            let words: Vec<&str> = l.split(' ').collect();
            // invoice-d's labels stay unseen.
            assert!(
                !words.iter().any(|w| ["#", "Day", "Amt"].contains(w)),
                "{l:?}"
            );
            if target.values().any(|v| v.as_str() == Some(*l)) {
                unlabelled += 1;
            }
            if words.len() == 2 && target.values().any(|v| v.as_str() == Some(words[0])) {
                value_first += 1;
            }
        }
    }
    assert_eq!(first_lines.len(), 3, "{first_lines:?}");
    assert!(
        value_first > 50 && unlabelled > 50,
        "{value_first} {unlabelled}"
    );
    // The same seed draws the same cards.
    assert_eq!(
        document(&cfg, 17).unwrap().png,
        document(&cfg, 17).unwrap().png
    );
    // A held-out family keeps its own arrangement: it is the test split.
    cfg.holdout_layouts = vec!["invoice-d".into()];
    let docs: Vec<Document> = (0..40).map(|i| document(&cfg, i).unwrap()).collect();
    assert!(docs.iter().any(|d| d.split == "test"));
    for d in &docs {
        let want = if d.split == "test" {
            "invoice-d"
        } else {
            "invoice-free"
        };
        assert_eq!(d.layout, want);
    }
    let held_out = docs.iter().find(|d| d.split == "test").unwrap();
    let date = held_out.target["date"].as_str().unwrap();
    assert!(
        held_out.text.ends_with(&format!("{date} Day")),
        "{:?}",
        held_out.text
    );
    let mut standard = SynthConfig::new(Profile::Standard, 1, 1);
    standard.free_arrangement = true;
    assert_eq!(
        standard.validate().unwrap_err().to_string(),
        "free_arrangement: only the tiny profile arranges cards freely"
    );
}

#[test]
fn any_row_reads_alone_across_parquet_row_groups_as_the_stream_reads_it() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(Profile::Tiny, 5, 220);
    cfg.format = Format::Parquet;
    cfg.shard_rows = 1000;
    generate(&cfg, d.path()).unwrap();
    let pin = pin_dir(d.path(), "d", None).unwrap();
    let reader = StreamReader::open(&pin, "train", 3, Some(1), Position::default()).unwrap();
    let order = reader.epoch_order(0);
    let index = foundry_datasets::SplitIndex::open(&pin, "train").unwrap();
    assert!(
        index.len() > 128,
        "more than two 64-row groups: {}",
        index.len()
    );
    let streamed: Vec<_> = reader.map(|e| e.unwrap()).collect();
    assert_eq!(streamed.len() as u64, index.len());
    // Read alone, last first: the same rows the stream gave, at the positions it named.
    for (k, (s, r)) in order.iter().enumerate().rev() {
        let alone = index
            .get(index.position_of(*s as usize, *r as u64))
            .unwrap();
        assert_eq!(alone, streamed[k]);
        assert_eq!(alone.row, *r as u64 + 1);
    }
    assert!(index.get(index.len()).is_err());
}

/// Shards written with `--format parquet` load in Hugging Face `datasets` with their images
/// decoded (the `Image` feature), not as `{bytes, path}` dicts.
#[test]
#[cfg_attr(
    not(has_hf_datasets),
    ignore = "needs python3 with Hugging Face `datasets` and Pillow (tools/test.sh installs them)"
)]
fn parquet_shards_load_in_hf_datasets_with_decoded_images() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(Profile::Tiny, 2, 30);
    cfg.format = Format::Parquet;
    cfg.shard_rows = 16;
    generate(&cfg, d.path()).unwrap();
    let script = r#"
import json, sys
import datasets
from PIL import Image
ds = datasets.load_dataset("parquet", data_dir=sys.argv[1] + "/data", split="train", cache_dir=sys.argv[1] + "/cache")
row = ds[0]
print(json.dumps({
    "feature": type(ds.features["image"]).__name__,
    "is_image": isinstance(row["image"], Image.Image),
    "size": list(row["image"].size),
    "rows": len(ds),
    "doc_type": row["doc_type"],
    "target": json.loads(row["target"]),
}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, d.path().to_str().unwrap()])
        .env("HF_DATASETS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["feature"], "Image", "{v}");
    assert_eq!(v["is_image"], true, "{v}");
    assert!(v["size"][0].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["doc_type"], "invoice", "{v}");
    assert!(v["target"].is_object(), "{v}");
    let pin = pin_dir(d.path(), "d", None).unwrap();
    assert_eq!(v["rows"].as_u64(), Some(pin.splits["train"].rows));
}
