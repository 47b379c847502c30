//! Jarvis `tokenizer.json`: a `{word: id}` object, or the same under `word_to_id` or `vocab`,
//! whose ids are exactly 0..n-1. Kept apart from the converter so the fuzz target can read it.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::path::Path;

fn first<'a>(obj: &'a serde_json::Map<String, Json>, names: &[&str]) -> Option<&'a Json> {
    names.iter().find_map(|n| obj.get(*n))
}

/// Reads `tokenizer.json`: a `{word: id}` object, or the same under `word_to_id` or `vocab`.
/// Ids must be exactly 0..n-1.
pub fn read_tokenizer(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_tokenizer(&text, path)
}

/// [`read_tokenizer`] on the text of the file (`path` names it in errors).
pub fn parse_tokenizer(text: &str, path: &Path) -> Result<Vec<String>> {
    let j: Json = serde_json::from_str(text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let obj = j
        .as_object()
        .ok_or_else(|| anyhow!("{}: expected a JSON object", path.display()))?;
    let map = match first(obj, &["word_to_id", "vocab"]) {
        Some(Json::Object(m)) => m,
        _ => obj,
    };
    let mut tokens = vec![None; map.len()];
    for (word, id) in map {
        let id = id.as_u64().ok_or_else(|| {
            anyhow!(
                "{}: id of '{word}' is not a non-negative integer",
                path.display()
            )
        })?;
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get_mut(i))
            .ok_or_else(|| {
                anyhow!(
                    "{}: id {id} of '{word}' is outside 0..{} (ids must be dense)",
                    path.display(),
                    map.len()
                )
            })?;
        if let Some(prev) = slot.replace(word.clone()) {
            bail!(
                "{}: id {id} is used by both '{prev}' and '{word}'",
                path.display()
            );
        }
    }
    // n distinct ids below n: every slot is filled.
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| anyhow!("{}: no word has id {i}", path.display())))
        .collect()
}
