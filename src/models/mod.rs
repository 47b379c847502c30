//! Model definitions: configuration, weights as views into a GGUF, forward pass.

pub mod jarvis;
