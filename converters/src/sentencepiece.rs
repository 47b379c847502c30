//! SentencePiece `tokenizer.model`: the protobuf `ModelProto` of sentencepiece's published
//! schema (`src/sentencepiece_model.proto`), declared here with prost's derive macros for the
//! fields a GGUF vocabulary needs. Field numbers and enum values are the schema's; prost skips
//! every field not declared, so newer files with more fields still parse.

use prost::Message;
use std::path::Path;

/// `message ModelProto` (proto2).
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

/// `message ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    #[prost(enumeration = "PieceType", optional, tag = "3", default = "Normal")]
    pub r#type: Option<i32>,
}

/// `enum ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// `message TrainerSpec` (the fields that describe the vocabulary).
#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    #[prost(enumeration = "ModelType", optional, tag = "3", default = "Unigram")]
    pub model_type: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub vocab_size: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    pub unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    pub bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    pub eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43")]
    pub pad_id: Option<i32>,
}

/// `enum TrainerSpec.ModelType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ModelType {
    Unigram = 1,
    Bpe = 2,
    Word = 3,
    Char = 4,
}

/// `message NormalizerSpec`.
#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a SentencePiece model: {source}")]
    Decode {
        path: String,
        source: prost::DecodeError,
    },
    #[error("{path}: the model has no pieces")]
    Empty { path: String },
    #[error("{path}: piece {id} has no text")]
    NoText { path: String, id: usize },
}

/// One vocabulary entry as the GGUF stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceType,
}

impl ModelProto {
    pub fn decode_bytes(bytes: &[u8], path: &str) -> Result<ModelProto, SpError> {
        let m = ModelProto::decode(bytes).map_err(|source| SpError::Decode {
            path: path.to_string(),
            source,
        })?;
        if m.pieces.is_empty() {
            return Err(SpError::Empty {
                path: path.to_string(),
            });
        }
        Ok(m)
    }

    pub fn read(path: &Path) -> Result<ModelProto, SpError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SpError::Io {
            path: p.clone(),
            source,
        })?;
        Self::decode_bytes(&bytes, &p)
    }

    /// The pieces in id order. An unknown type value reads as NORMAL, as sentencepiece does.
    pub fn vocabulary(&self, path: &str) -> Result<Vec<Piece>, SpError> {
        self.pieces
            .iter()
            .enumerate()
            .map(|(id, p)| {
                Ok(Piece {
                    text: p.piece.clone().ok_or_else(|| SpError::NoText {
                        path: path.to_string(),
                        id,
                    })?,
                    score: p.score.unwrap_or(0.0),
                    kind: p
                        .r#type
                        .and_then(|t| PieceType::try_from(t).ok())
                        .unwrap_or(PieceType::Normal),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_prost() {
        let m = ModelProto {
            pieces: vec![
                SentencePiece {
                    piece: Some("<unk>".into()),
                    score: Some(0.0),
                    r#type: Some(PieceType::Unknown as i32),
                },
                SentencePiece {
                    piece: Some("\u{2581}the".into()),
                    score: Some(-1.5),
                    r#type: None,
                },
            ],
            trainer_spec: Some(TrainerSpec {
                model_type: Some(ModelType::Bpe as i32),
                vocab_size: Some(2),
                byte_fallback: Some(true),
                unk_id: Some(0),
                bos_id: Some(-1),
                eos_id: Some(-1),
                pad_id: Some(-1),
            }),
            normalizer_spec: None,
        };
        let bytes = m.encode_to_vec();
        let back = ModelProto::decode_bytes(&bytes, "x").unwrap();
        let v = back.vocabulary("x").unwrap();
        assert_eq!(v[0].kind, PieceType::Unknown);
        assert_eq!(v[1].kind, PieceType::Normal);
        assert_eq!(v[1].text, "\u{2581}the");
        assert_eq!(v[1].score, -1.5);
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let e = ModelProto::decode_bytes(&[0xff, 0xff, 0xff], "bad.model").unwrap_err();
        assert!(e.to_string().starts_with("bad.model: "), "{e}");
        let e = ModelProto::decode_bytes(&[], "empty.model").unwrap_err();
        assert!(e.to_string().contains("no pieces"), "{e}");
    }

    #[test]
    fn reads_the_committed_fixture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/gemma3/tokenizer/tokenizer.model");
        let m = ModelProto::read(&path).unwrap();
        let v = m.vocabulary("fixture").unwrap();
        assert_eq!(v.len(), 600);
        assert_eq!(v[0].text, "<pad>");
        assert_eq!(v[0].kind, PieceType::Control);
        assert_eq!(v[3].kind, PieceType::Unknown);
        assert_eq!(v[5].text, "<start_of_turn>");
        assert_eq!(v[5].kind, PieceType::UserDefined);
        assert_eq!(v[7].text, "<0x00>");
        assert_eq!(v[7].kind, PieceType::Byte);
        let t = m.trainer_spec.unwrap();
        assert_eq!(t.model_type, Some(ModelType::Bpe as i32));
        assert_eq!(t.byte_fallback, Some(true));
    }
}
