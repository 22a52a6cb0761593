//! The trainer on the tiny fixture model: loss goes down, every LoRA weight gets a gradient
//! through an NF4 base, checkpoints resume bit-identically, retention and hashes.

mod common;

use common::*;
use foundry_qlora::checkpoint::{hash_file, list_checkpoints};
use foundry_qlora::data::{collate, IGNORE};
use foundry_qlora::train::{Flow, Trainer};
use foundry_qlora::{lora, quantize_model};

#[test]
fn labels_cover_only_the_answer() {
    let data = dataset();
    for e in &data {
        let n = e.labels.iter().filter(|l| **l != IGNORE).count();
        assert!(
            n >= 2 && n < e.input_ids.len() / 2,
            "{n} labelled of {}",
            e.input_ids.len()
        );
        // The last labelled token is <end_of_utterance> (id 5 in the fixture tokenizer).
        let last = e.labels.iter().rposition(|l| *l != IGNORE).unwrap();
        assert_eq!(e.labels[last], 5);
    }
    let b = collate(&data[..2], 6, &candle_core::Device::Cpu).unwrap();
    assert_eq!(b.positions.len(), b.targets.len());
    assert_eq!(b.input_ids.dim(0).unwrap(), 2);
}

#[test]
fn every_lora_weight_gets_a_gradient_through_nf4() {
    let mut model = tiny();
    let (n, params, bytes) = quantize_model(&mut model, r"model\..*").unwrap();
    assert_eq!(n, 43, "every linear but lm_head");
    println!(
        "NF4: {n} linears, {params} params, {:.3} bits/param",
        8.0 * bytes as f64 / params as f64
    );
    let mut t = Trainer::new(model, config(4, 0.1)).unwrap();
    let data = dataset();
    // B starts at zero, so A has no gradient until B moves. Step 1 runs at lr 0 (warmup starts
    // at 0 as in transformers), step 2 moves B; from then on A gets a gradient as well.
    let norms = t.gradient_norms(&data[..2]).unwrap();
    assert!(norms
        .iter()
        .filter(|(k, _)| k.contains("lora_A"))
        .all(|(_, v)| *v == 0.0));
    assert!(norms
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .all(|(_, v)| *v > 0.0));
    assert_eq!(t.train_step(&data).unwrap().lr, 0.0);
    t.train_step(&data).unwrap();
    let norms = t.gradient_norms(&data[..2]).unwrap();
    assert_eq!(norms.len(), 2 * 31);
    for (k, v) in &norms {
        assert!(*v > 0.0, "{k} has a zero gradient");
    }
}

#[test]
fn loss_goes_down_on_the_tiny_model() {
    let mut model = tiny();
    quantize_model(&mut model, r"model\..*").unwrap();
    let mut cfg = config(30, 0.0);
    cfg.lr = 1e-2;
    let mut t = Trainer::new(model, cfg).unwrap();
    let data = dataset();
    let mut losses = Vec::new();
    for _ in 0..30 {
        losses.push(t.train_step(&data).unwrap().loss);
    }
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[27..].iter().sum::<f64>() / 3.0;
    println!("loss: first 3 steps {first:.4}, last 3 steps {last:.4}");
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn resume_is_bit_identical_and_checkpoints_are_hashed_and_pruned() {
    let data = dataset();
    let root = tempfile::tempdir().unwrap();
    let full_dir = root.path().join("full");
    let mut full = Trainer::new(tiny(), config(6, 0.1)).unwrap();
    let mut infos = Vec::new();
    let end = full
        .run(&data, &full_dir, &mut |_, _| Flow::Continue, &mut |c| {
            infos.push(c.clone());
            Flow::Continue
        })
        .unwrap();
    assert_eq!((end.steps, end.stopped), (6, false));
    assert!(end.last_loss.is_some());
    assert_eq!(
        infos.iter().map(|c| c.step).collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    let last = infos.last().unwrap();
    let names: Vec<&str> = last.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "trainer_state.json"
        ]
    );
    for f in &last.files {
        let (h, n) = hash_file(&last.dir.join(&f.path)).unwrap();
        assert_eq!((h.as_str(), n), (f.sha256.as_str(), f.bytes));
    }
    let want = hash_file(&full_dir.join("checkpoint-6/adapter_model.safetensors")).unwrap();
    for from in [2u64, 4] {
        let dir = root.path().join(format!("resumed-{from}"));
        let mut t = Trainer::resume(
            tiny(),
            config(6, 0.1),
            &full_dir.join(format!("checkpoint-{from}")),
        )
        .unwrap();
        assert_eq!(t.step(), from);
        t.run(&data, &dir, &mut |_, _| Flow::Continue, &mut |_| {
            Flow::Continue
        })
        .unwrap();
        let got = hash_file(&dir.join("checkpoint-6/adapter_model.safetensors")).unwrap();
        assert_eq!(got, want, "resumed from step {from}: final adapter differs");
        let opt = hash_file(&dir.join("checkpoint-6/optimizer.safetensors")).unwrap();
        assert_eq!(
            opt,
            hash_file(&full_dir.join("checkpoint-6/optimizer.safetensors")).unwrap()
        );
    }
    // keep_last prunes older checkpoints.
    let mut cfg = config(6, 0.1);
    cfg.keep_last = 2;
    let pruned = root.path().join("pruned");
    Trainer::new(tiny(), cfg)
        .unwrap()
        .run(&data, &pruned, &mut |_, _| Flow::Continue, &mut |_| {
            Flow::Continue
        })
        .unwrap();
    let left: Vec<u64> = list_checkpoints(&pruned)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, vec![4, 6]);
    // A changed config is refused on resume.
    let mut other = config(6, 0.1);
    other.lr = 1.0;
    assert!(Trainer::resume(tiny(), other, &full_dir.join("checkpoint-4")).is_err());
    // The saved adapter loads back onto a fresh model.
    let mut m = tiny();
    let (c, p) = lora::load_adapter_into(&mut m, &full_dir.join("checkpoint-6")).unwrap();
    assert_eq!((c.r, p.len()), (4, 31));
}

#[test]
fn a_callback_stops_the_loop_where_it_asks() {
    let data = dataset();
    let root = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(tiny(), config(6, 0.1)).unwrap();
    let mut steps = Vec::new();
    let end = t
        .run(
            &data,
            root.path(),
            &mut |m, _| {
                steps.push(m.step);
                Flow::Continue
            },
            // The first checkpoint (step 2) is not recorded: stop there.
            &mut |_| Flow::Stop,
        )
        .unwrap();
    assert_eq!(steps, vec![1, 2]);
    assert_eq!((end.steps, end.stopped), (2, true));
    let mut t = Trainer::new(tiny(), config(6, 0.1)).unwrap();
    let end = t
        .run(&data, root.path(), &mut |_, _| Flow::Stop, &mut |_| {
            Flow::Continue
        })
        .unwrap();
    assert_eq!((end.steps, end.stopped), (1, true));
}
