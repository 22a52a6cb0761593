//! Interop with PEFT and bitsandbytes (fixtures from tools/fixtures/make_qlora_peft_fixtures.py).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use foundry_qlora::lora::{self, LoraConfig, LoraInit};
use foundry_qlora::train::Trainer;

fn logits_of(model: &foundry_idefics2::Idefics2) -> Tensor {
    let (ids, pv, pm) = golden_batch();
    model.forward(&ids, Some(&pv), Some(&pm)).unwrap()
}

#[test]
fn a_peft_adapter_loads_and_gives_peft_logits() {
    let want =
        candle_core::safetensors::load(fixtures().join("peft_logits.safetensors"), &Device::Cpu)
            .unwrap();
    let mut model = tiny();
    let base = logits_of(&model);
    let (cfg, params) =
        lora::load_adapter_into(&mut model, &fixtures().join("peft_adapter")).unwrap();
    assert_eq!(
        (cfg.r, cfg.lora_alpha, cfg.init),
        (4, 8.0, LoraInit::Gaussian)
    );
    assert_eq!(params.len(), 31);
    let got = logits_of(&model);
    let d_base = masked_diff(&base, &want["base"]);
    let d = masked_diff(&got, &want["adapted"]);
    println!("PEFT adapter: base logits diff {d_base:.2e}, adapted logits diff {d:.2e}");
    assert!(d_base < 1e-4 && d < 1e-4, "{d_base} {d}");
    assert!(
        masked_diff(&got, &base) > 0.1,
        "the adapter must change the logits"
    );
}

#[test]
fn a_bnb_4bit_checkpoint_loads_and_gives_bnb_logits() {
    let want =
        candle_core::safetensors::load(fixtures().join("bnb_logits.safetensors"), &Device::Cpu)
            .unwrap();
    let (model, n) =
        foundry_qlora::load_bnb_dir(&fixtures().join("tiny-bnb-4bit"), DType::F32, &Device::Cpu)
            .unwrap();
    assert_eq!(n, 43);
    let got = logits_of(&model);
    let d = masked_diff(&got, &want["logits"]);
    println!("bnb 4-bit checkpoint: logits diff {d:.2e}");
    assert!(d < 1e-4, "{d}");
}

/// The adapter Foundry trains (3 steps on the tiny dataset) and its logits on the golden batch.
/// `FOUNDRY_WRITE_FIXTURES=1` rewrites fixtures/foundry_adapter/, which
/// `make_qlora_peft_fixtures.py check` then loads in PEFT (writing peft_check.json).
#[test]
fn an_adapter_trained_here_loads_in_peft() {
    let dir = fixtures().join("foundry_adapter");
    if std::env::var("FOUNDRY_WRITE_FIXTURES").is_ok() {
        let mut cfg = config(3, 0.1);
        cfg.lr = 2e-2;
        let mut t = Trainer::new(tiny(), cfg.clone()).unwrap();
        let data = dataset();
        for _ in 0..3 {
            t.train_step(&data).unwrap();
        }
        lora::save_adapter(&dir, &cfg.lora, t.params()).unwrap();
        let mut m = tiny();
        lora::load_adapter_into(&mut m, &dir).unwrap();
        let l = logits_of(&m);
        foundry_qlora::checkpoint::write_safetensors(
            &dir.join("foundry_logits.safetensors"),
            &[("logits".into(), l)],
        )
        .unwrap();
    }
    // Our logits with the committed adapter are the committed ones...
    let mut m = tiny();
    let (cfg, _) = lora::load_adapter_into(&mut m, &dir).unwrap();
    assert_eq!(cfg, LoraConfig { ..lora(0.1) });
    let ours = candle_core::safetensors::load(dir.join("foundry_logits.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(max_abs_diff(&logits_of(&m), &ours["logits"]) < 1e-5);
    // ...and PEFT loaded the same files and got the same logits.
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("peft_check.json")).expect("run the check script"),
    )
    .unwrap();
    println!("PEFT check: {check}");
    assert_eq!(check["ok"], true);
    assert_eq!(check["lora_modules"], 31);
    assert!(check["max_abs_logit_diff"].as_f64().unwrap() < 1e-4);
}
