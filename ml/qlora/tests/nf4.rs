//! NF4 against bitsandbytes 0.50 fixtures (tools/fixtures/make_qlora_nf4_fixtures.py).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use foundry_kernels::FrozenWeight;
use foundry_qlora::nf4::{dynamic_map, Absmax, Nf4Tensor, Nf4Weight, NF4_CODE};

const CASES: [&str; 5] = ["w_small", "w_multi", "w_odd", "w_heavy", "w_zero_block"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("nf4.safetensors"), &Device::Cpu).unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn code_maps_match_bitsandbytes() {
    let t = load();
    assert_eq!(f32s(&t["w_small.weight.quant_map"]), NF4_CODE.to_vec());
    assert_eq!(
        f32s(&t["w_small.weight.nested_quant_map"]),
        dynamic_map().to_vec()
    );
}

#[test]
fn quantize_is_byte_identical_to_bitsandbytes() {
    let t = load();
    for name in CASES {
        let input = &t[&format!("{name}.input")];
        let shape = input.dims().to_vec();
        let data = f32s(input);
        // Plain (no double quant): packed bytes and f32 absmax bit-identical.
        let plain = Nf4Tensor::quantize(&data, &shape, 64, false).unwrap();
        assert_eq!(
            plain.packed,
            u8s(&t[&format!("{name}.plain.weight")]),
            "{name} plain packed"
        );
        let Absmax::F32(am) = &plain.absmax else {
            panic!()
        };
        let want = f32s(&t[&format!("{name}.plain.absmax")]);
        assert_eq!(
            am.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name} plain absmax"
        );
        // Double quant: packed bytes, absmax codes, nested absmax and offset identical.
        let q = Nf4Tensor::quantize(&data, &shape, 64, true).unwrap();
        assert_eq!(
            q.packed,
            u8s(&t[&format!("{name}.weight")]),
            "{name} packed"
        );
        let Absmax::Double {
            codes,
            nested_absmax,
            offset,
            ..
        } = &q.absmax
        else {
            panic!()
        };
        let want_codes = u8s(&t[&format!("{name}.weight.absmax")]);
        let diff = codes
            .iter()
            .zip(&want_codes)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} absmax codes differ",
            codes.len()
        );
        assert_eq!(
            nested_absmax,
            &f32s(&t[&format!("{name}.weight.nested_absmax")]),
            "{name}"
        );
        let from_bnb = Nf4Tensor::from_bnb(&t, name).unwrap();
        let Absmax::Double { offset: o2, .. } = &from_bnb.absmax else {
            panic!()
        };
        assert_eq!(offset.to_bits(), o2.to_bits(), "{name} offset");
        assert_eq!(q, from_bnb, "{name}: quantized state equals the loaded one");
    }
}

#[test]
fn dequantize_is_bit_identical_to_bitsandbytes() {
    let t = load();
    for name in CASES {
        let q = Nf4Tensor::from_bnb(&t, name).unwrap();
        let got = q.dequantize_f32();
        let want = f32s(&t[&format!("{name}.dequant")]);
        assert_eq!(got.len(), want.len());
        let bad = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(bad, 0, "{name}: {bad} dequantized values differ");
        let shape = t[&format!("{name}.input")].dims().to_vec();
        let plain =
            Nf4Tensor::quantize(&f32s(&t[&format!("{name}.input")]), &shape, 64, false).unwrap();
        let want = f32s(&t[&format!("{name}.plain.dequant")]);
        assert_eq!(plain.dequantize_f32(), want, "{name} plain dequant");
    }
}

#[test]
fn bnb_layout_round_trips_and_reports_bits_per_param() {
    let t = load();
    let q = Nf4Tensor::from_bnb(&t, "w_multi").unwrap();
    let mut map: HashMap<String, Tensor> = q.to_bnb("x").unwrap().into_iter().collect();
    for suffix in [
        "",
        ".absmax",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_map",
    ] {
        let a = &map[&format!("x.weight{suffix}")];
        let b = &t[&format!("w_multi.weight{suffix}")];
        assert_eq!(a.dims(), b.dims(), "{suffix}");
        assert_eq!(a.dtype(), b.dtype(), "{suffix}");
    }
    let js = String::from_utf8(u8s(&map["x.weight.quant_state.bitsandbytes__nf4"])).unwrap();
    let want = String::from_utf8(u8s(&t["w_multi.weight.quant_state.bitsandbytes__nf4"])).unwrap();
    assert_eq!(js, want);
    let back = Nf4Tensor::from_bnb(&map, "x").unwrap();
    assert_eq!(back, q);
    // A 4096 x 4096 weight: 4 bits + 8/64 + 32/(64*256) (+ maps) ≈ 4.127 bits per parameter.
    let big = Nf4Tensor::quantize(&vec![0.5f32; 4096 * 4096], &[4096, 4096], 64, true).unwrap();
    let bits = big.bits_per_param();
    assert!((bits - 4.127).abs() < 0.001, "{bits}");
    // Errors name the problem.
    map.remove("x.weight.absmax");
    let e = Nf4Tensor::from_bnb(&map, "x").unwrap_err().to_string();
    assert!(e.contains("x.weight.absmax"), "{e}");
}

#[test]
fn nf4_weight_dequantizes_in_the_seam() {
    let t = load();
    let w = Nf4Weight::new(Nf4Tensor::from_bnb(&t, "w_small").unwrap()).unwrap();
    assert_eq!(w.shape(), (64, 96));
    let d = w.dequantize(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(f32s(&d), f32s(&t["w_small.dequant"]));
    let b = w.dequantize(DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
}

#[test]
fn blocks_decode_like_the_whole_weight() {
    // Odd widths put blocks of 64 across rows and start rows on the second code of a byte.
    for (n, k) in [(37usize, 45usize), (64, 96), (9, 200)] {
        let data: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.5) - 1.0)
            .collect();
        let t = Nf4Tensor::quantize(&data, &[n, k], 64, true).unwrap();
        let whole = t.dequantize_f32();
        let w = Nf4Weight::new(t).unwrap();
        for (r0, c0, rows, cols) in [
            (0, 0, n, k),
            (1, 3, 5, k - 7),
            (n - 2, 1, 2, 33),
            (3, 0, 1, 1),
        ] {
            let mut out = vec![f32::NAN; rows * cols];
            w.dequantize_block(r0, c0, rows, cols, &mut out).unwrap();
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        out[i * cols + j].to_bits(),
                        whole[(r0 + i) * k + c0 + j].to_bits(),
                        "[{n}, {k}] block at ({r0}, {c0}): ({i}, {j})"
                    );
                }
            }
        }
        // A block outside the weight is an error, not a panic.
        assert!(w.dequantize_block(n, 0, 1, 1, &mut [0.0]).is_err());
    }
}
