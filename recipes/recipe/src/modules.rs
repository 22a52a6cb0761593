//! Module names of an architecture, enumerated offline from its config.json,
//! spelled as transformers names them (the names PEFT's regex is matched against).

use serde_json::Value;

use crate::RecipeError;

/// transformers' default depths when config.json omits them
/// (Idefics2VisionConfig, Idefics2PerceiverConfig, MistralConfig).
const DEFAULT_VISION_LAYERS: u64 = 12;
const DEFAULT_RESAMPLER_DEPTH: u64 = 3;
const DEFAULT_TEXT_LAYERS: u64 = 32;

/// The linear modules of an Idefics2 model described by `config` (the parsed
/// config.json): vision encoder (`q/k/v/out_proj`, `mlp.fc1/fc2`), connector
/// (`modality_projection.{gate,up,down}_proj`, perceiver resampler attention
/// and MLP), Mistral text model and `lm_head`. Missing depths take
/// transformers' defaults (12 vision layers, resampler depth 3, 32 text layers).
pub fn idefics2_module_names(config: &Value) -> Result<Vec<String>, RecipeError> {
    let depth = |section: &str, key: &str, default: u64| -> Result<u64, RecipeError> {
        match config.get(section).and_then(|s| s.get(key)) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| RecipeError::Invalid {
                file: "config.json".into(),
                key: format!("{section}.{key}"),
                reason: format!("expected a non-negative integer, found {v}"),
            }),
        }
    };
    let vision = depth("vision_config", "num_hidden_layers", DEFAULT_VISION_LAYERS)?;
    let resampler = depth(
        "perceiver_config",
        "resampler_depth",
        DEFAULT_RESAMPLER_DEPTH,
    )?;
    let text = depth("text_config", "num_hidden_layers", DEFAULT_TEXT_LAYERS)?;
    let mut names = Vec::new();
    for i in 0..vision {
        let p = format!("model.vision_model.encoder.layers.{i}");
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            names.push(format!("{p}.self_attn.{m}"));
        }
        names.push(format!("{p}.mlp.fc1"));
        names.push(format!("{p}.mlp.fc2"));
    }
    for m in ["gate_proj", "up_proj", "down_proj"] {
        names.push(format!("model.connector.modality_projection.{m}"));
    }
    for i in 0..resampler {
        let p = format!("model.connector.perceiver_resampler.layers.{i}");
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            names.push(format!("{p}.self_attn.{m}"));
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{m}"));
        }
    }
    for i in 0..text {
        let p = format!("model.text_model.layers.{i}");
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            names.push(format!("{p}.self_attn.{m}"));
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{m}"));
        }
    }
    names.push("lm_head".into());
    Ok(names)
}

/// Reads `dir/config.json` and enumerates its Idefics2 module names.
pub fn idefics2_module_names_from_dir(dir: &std::path::Path) -> Result<Vec<String>, RecipeError> {
    let path = dir.join("config.json");
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| RecipeError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| RecipeError::Syntax {
        file,
        reason: e.to_string(),
    })?;
    idefics2_module_names(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TUTORIAL_TARGET_MODULES;

    #[test]
    fn counts_and_names_follow_transformers() {
        let cfg = serde_json::json!({
            "vision_config": {"num_hidden_layers": 2},
            "perceiver_config": {"resampler_depth": 2},
            "text_config": {"num_hidden_layers": 2}
        });
        let names = idefics2_module_names(&cfg).unwrap();
        assert_eq!(names.len(), 2 * 6 + 3 + 2 * 7 + 2 * 7 + 1);
        for n in [
            "model.text_model.layers.0.self_attn.q_proj",
            "model.connector.modality_projection.gate_proj",
            "model.connector.perceiver_resampler.layers.1.self_attn.q_proj",
            "model.vision_model.encoder.layers.0.self_attn.q_proj",
            "model.vision_model.encoder.layers.1.mlp.fc1",
            "lm_head",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
    }

    #[test]
    fn tutorial_regex_selects_text_and_connector_only() {
        let names = idefics2_module_names(&serde_json::json!({})).unwrap();
        let re = regex::Regex::new(&format!("^(?:{TUTORIAL_TARGET_MODULES})$")).unwrap();
        let hit: Vec<_> = names.iter().filter(|n| re.is_match(n)).collect();
        // 3 modality projection + 3 resampler layers × 7 + 32 text layers × 7.
        assert_eq!(hit.len(), 3 + 21 + 224);
        assert!(hit.iter().all(|n| !n.contains("vision_model")));
    }

    #[test]
    fn bad_depth_is_an_error() {
        let cfg = serde_json::json!({"text_config": {"num_hidden_layers": "x"}});
        let e = idefics2_module_names(&cfg).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.json: text_config.num_hidden_layers: expected a non-negative integer, found \"x\""
        );
    }
}
