//! Processor parity against transformers' PIL Idefics2 image processor and the
//! Idefics2Processor (prompt expansion, tokenization).

mod common;

use candle_core::{DType, Device};
use common::*;
use foundry_idefics2::processor::{
    apply_chat_template, ChatMessage, ContentPart, Processor, RgbImage,
};

fn image(name: &str) -> RgbImage {
    RgbImage::open(&fixtures().join("images").join(name)).unwrap()
}

/// Pillow <= 12 always runs the horizontal pass first; that is what `resize_bilinear`
/// implements, byte for byte. Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass
/// first when the height shrinks much more than the width, which moves a few pixels by
/// one level; the fixtures (Pillow 13.0) show 4 such cases out of 23.
#[test]
fn pil_bilinear_resize_matches_pillow() {
    let want = candle_core::safetensors::load(fixtures().join("resize.safetensors"), &Device::Cpu)
        .unwrap();
    let (mut exact, mut off_by_one) = (0, Vec::new());
    for (key, t) in &want {
        let (name, size) = key.rsplit_once('.').unwrap();
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
        let got = image(name).resize_bilinear(w, h);
        let want: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
        let worst = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap_or(0);
        assert!(
            worst <= 1,
            "{key}: a pixel differs from PIL by {worst} levels"
        );
        if worst == 0 {
            exact += 1;
        } else {
            off_by_one.push(key.clone());
        }
    }
    println!("{exact} PIL resizes byte-exact, within one level: {off_by_one:?}");
    assert!(exact >= 19, "only {exact} byte-exact resizes");
}

fn check_batch(config: &str) {
    let dir = fixtures().join(config);
    let proc = Processor::from_dir(&dir).unwrap();
    let meta = golden_json(config);
    let g = golden(config);
    let texts: Vec<String> = meta["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    let images: Vec<Vec<RgbImage>> = meta["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| image(n.as_str().unwrap()))
                .collect()
        })
        .collect();
    let enc = proc.encode(&texts, &images, &Device::Cpu).unwrap();
    let want_ids: Vec<Vec<u32>> = ids_u32(&g["batch.input_ids"]).to_vec2().unwrap();
    assert_eq!(enc.input_ids, want_ids, "{config}: input_ids");
    let want_mask: Vec<Vec<u32>> = ids_u32(&g["batch.attention_mask"]).to_vec2().unwrap();
    assert_eq!(enc.attention_mask, want_mask, "{config}: attention_mask");
    let px = enc.pixels.unwrap();
    assert_eq!(
        px.pixel_values.dims(),
        g["batch.pixel_values"].dims(),
        "{config}: pixel_values shape"
    );
    let d = max_abs_diff(&px.pixel_values, &g["batch.pixel_values"]);
    println!(
        "{config}: pixel_values {:?} max abs diff {d:e}",
        px.pixel_values.dims()
    );
    assert_eq!(d, 0.0, "{config}: pixel_values differ by {d}");
    let pm_got: Vec<u8> = px
        .pixel_attention_mask
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let pm_want: Vec<u8> = g["batch.pixel_attention_mask"]
        .to_dtype(DType::U8)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(pm_got, pm_want, "{config}: pixel_attention_mask");
}

#[test]
fn tiny_processor_matches_python() {
    check_batch("tiny");
}

#[test]
fn split_processor_matches_python() {
    check_batch("split");
}

fn parts(v: &serde_json::Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().unwrap().to_string(),
            content: m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c["type"].as_str().unwrap() {
                    "image" => ContentPart::Image,
                    _ => ContentPart::Text(c["text"].as_str().unwrap().to_string()),
                })
                .collect(),
        })
        .collect()
}

#[test]
fn chat_template_and_generation_inputs_match_python() {
    for config in ["tiny", "split"] {
        let dir = fixtures().join(config);
        let proc = Processor::from_dir(&dir).unwrap();
        let meta = golden_json(config);
        let g = golden(config);
        for (i, gen) in meta["generate"].as_array().unwrap().iter().enumerate() {
            let prompt = apply_chat_template(&parts(&gen["messages"]), true);
            assert_eq!(
                prompt,
                gen["prompt"].as_str().unwrap(),
                "{config}: chat template"
            );
            let imgs: Vec<RgbImage> = gen["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| image(n.as_str().unwrap()))
                .collect();
            let enc = proc.encode(&[prompt], &[imgs], &Device::Cpu).unwrap();
            let want: Vec<Vec<u32>> = ids_u32(&g[&format!("gen{i}.input_ids")]).to_vec2().unwrap();
            assert_eq!(enc.input_ids, want, "{config}: gen{i} input_ids");
            let px = enc.pixels.unwrap();
            assert_eq!(
                max_abs_diff(&px.pixel_values, &g[&format!("gen{i}.pixel_values")]),
                0.0
            );
        }
    }
}

#[test]
fn closing_fake_token_gets_a_space() {
    use foundry_idefics2::processor::expand_image_tokens;
    let (f, i) = ("<fake_token_around_image>", "<image>");
    let s = expand_image_tokens("a<image>b<image> c<image><end_of_utterance>", 1, false);
    assert_eq!(
        s,
        format!("a{f}{i}{f} b{f}{i}{f} c{f}{i}{f}<end_of_utterance>")
    );
    // Adjacent images share one fake token.
    let s = expand_image_tokens("<image><image>x", 2, false);
    assert_eq!(s, format!("{f}{i}{i}{f}{i}{i}{f} x"));
}
