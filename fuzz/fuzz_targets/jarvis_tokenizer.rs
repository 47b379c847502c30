//! Fuzzes the Jarvis `tokenizer.json` reader (`converters/src/tokenizer_json.rs`): any input
//! either fails with an error or gives a dense vocabulary of distinct words.

#![no_main]

#[path = "../../converters/src/tokenizer_json.rs"]
mod tokenizer_json;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(words) = tokenizer_json::parse_tokenizer(text, std::path::Path::new("fuzz.json")) {
        let distinct: std::collections::HashSet<&String> = words.iter().collect();
        assert_eq!(distinct.len(), words.len());
    }
});
