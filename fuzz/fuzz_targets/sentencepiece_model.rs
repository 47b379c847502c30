//! Fuzzes the SentencePiece `tokenizer.model` parser (`converters/src/sentencepiece.rs`, prost):
//! any input either fails with an error or decodes into pieces that all have text.

#![no_main]

#[allow(dead_code)]
#[path = "../../converters/src/sentencepiece.rs"]
mod sentencepiece;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = sentencepiece::ModelProto::decode_bytes(data, "fuzz.model") else {
        return;
    };
    if let Ok(v) = m.vocabulary("fuzz.model") {
        assert_eq!(v.len(), m.pieces.len());
    }
});
