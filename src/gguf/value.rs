//! Metadata value types: the on-disk type ids, borrowed views into a file, and owned values
//! for writing.

use std::fmt;

/// `enum gguf_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name (`gguf_type_name`).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from an open file. Strings are raw bytes (tokenizer vocabularies
/// hold byte tokens that are not UTF-8); arrays are decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a [u8]),
    Array(ArrayRef<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short type description: `u32`, `str`, `arr[str]`, `arr[arr]`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("arr[{}]", a.elem_type()),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as an unsigned integer, if it is one of any width (or a non-negative signed).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayRef<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An owned copy, for writing into another file.
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::String(s) => MetaValue::String(s.to_vec()),
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
            Value::Array(a) => MetaValue::Array {
                elem: a.elem_type(),
                items: a.iter().map(|v| v.to_owned_value()).collect(),
            },
        }
    }
}

/// An array inside the file: element type, count and the bytes of its elements. The bytes were
/// validated when the file was opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrayRef<'a> {
    pub(crate) elem: ValueType,
    pub(crate) len: u64,
    pub(crate) bytes: &'a [u8],
}

impl<'a> ArrayRef<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes the elements one by one, without allocating.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            left: self.len,
            bytes: self.bytes,
        }
    }

    /// The element at `i`: O(1) for fixed-size elements, a walk for strings and arrays.
    pub fn get(&self, i: u64) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(sz) => {
                let at = usize::try_from(i).ok()?.checked_mul(sz)?;
                decode_scalar(self.elem, self.bytes.get(at..at + sz)?)
            }
            None => self.iter().nth(usize::try_from(i).ok()?),
        }
    }

    /// The elements as u64 if they are all unsigned (or non-negative) integers.
    pub fn to_u64_vec(&self) -> Option<Vec<u64>> {
        self.iter().map(|v| v.as_u64()).collect()
    }

    /// The elements as f64 if they are all numbers.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        self.iter().map(|v| v.as_f64()).collect()
    }

    /// The raw bytes of each string element; empty if the elements are not strings.
    pub fn strings(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let is_str = self.elem == ValueType::String;
        self.iter().filter_map(move |v| match v {
            Value::String(s) if is_str => Some(s),
            _ => None,
        })
    }
}

/// Iterator over an array's elements.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    elem: ValueType,
    left: u64,
    bytes: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (v, used) = decode_value(self.elem, self.bytes)?;
        self.bytes = &self.bytes[used..];
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX);
        (0, Some(n))
    }
}

fn le<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.get(..N)?.try_into().ok()
}

/// Decodes a little-endian fixed-size value into an owned one (`None` for strings, arrays or
/// short input).
pub fn scalar_from_le(ty: ValueType, b: &[u8]) -> Option<MetaValue> {
    decode_scalar(ty, b).map(|v| v.to_owned_value())
}

/// Decodes a fixed-size value from the start of `b`.
pub(crate) fn decode_scalar(ty: ValueType, b: &[u8]) -> Option<Value<'_>> {
    Some(match ty {
        ValueType::U8 => Value::U8(*b.first()?),
        ValueType::I8 => Value::I8(i8::from_le_bytes(le(b)?)),
        ValueType::Bool => Value::Bool(*b.first()? != 0),
        ValueType::U16 => Value::U16(u16::from_le_bytes(le(b)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(le(b)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(le(b)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(le(b)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(le(b)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(le(b)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(le(b)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(le(b)?)),
        ValueType::String | ValueType::Array => return None,
    })
}

/// Decodes one value of type `ty` at the start of already-validated bytes; returns it and the
/// bytes it used. `None` only if the bytes are not what the reader validated.
pub(crate) fn decode_value(ty: ValueType, b: &[u8]) -> Option<(Value<'_>, usize)> {
    match ty {
        ValueType::String => {
            let n = usize::try_from(u64::from_le_bytes(le(b)?)).ok()?;
            let s = b.get(8..8usize.checked_add(n)?)?;
            Some((Value::String(s), 8 + n))
        }
        ValueType::Array => {
            let elem = ValueType::from_id(u32::from_le_bytes(le(b)?))?;
            let len = u64::from_le_bytes(le(b.get(4..)?)?);
            let body = b.get(12..)?;
            let used = elements_size(elem, len, body)?;
            let arr = ArrayRef {
                elem,
                len,
                bytes: &body[..used],
            };
            Some((Value::Array(arr), 12 + used))
        }
        _ => {
            let sz = ty.fixed_size()?;
            Some((decode_scalar(ty, b)?, sz))
        }
    }
}

/// Bytes taken by `len` elements of `elem` at the start of `b` (walking strings and arrays).
fn elements_size(elem: ValueType, len: u64, b: &[u8]) -> Option<usize> {
    if let Some(sz) = elem.fixed_size() {
        let total = usize::try_from(len).ok()?.checked_mul(sz)?;
        return (total <= b.len()).then_some(total);
    }
    let mut at = 0usize;
    for _ in 0..len {
        let (_, used) = decode_value(elem, b.get(at..)?)?;
        at = at.checked_add(used)?;
    }
    Some(at)
}

/// An owned metadata value, for the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Raw bytes: usually UTF-8, but byte tokens need not be.
    String(Vec<u8>),
    /// A homogeneous array; `elem` is needed to write an empty one.
    Array {
        elem: ValueType,
        items: Vec<MetaValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array { .. } => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// An array of strings.
    pub fn strings<I, S>(items: I) -> MetaValue
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        MetaValue::Array {
            elem: ValueType::String,
            items: items
                .into_iter()
                .map(|s| MetaValue::String(s.as_ref().to_vec()))
                .collect(),
        }
    }

    /// An array of values convertible to `MetaValue`, with element type `elem`.
    pub fn array<I, T>(elem: ValueType, items: I) -> MetaValue
    where
        I: IntoIterator<Item = T>,
        T: Into<MetaValue>,
    {
        MetaValue::Array {
            elem,
            items: items.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether this is an array that holds arrays (which llama.cpp refuses to load).
    pub fn is_nested_array(&self) -> bool {
        matches!(
            self,
            MetaValue::Array {
                elem: ValueType::Array,
                ..
            }
        )
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s);
            }
            MetaValue::Array { elem, items } => {
                out.extend_from_slice(&elem.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                // An element that is itself an array carries its own type and count, which is
                // exactly its own encoding.
                for it in items {
                    it.encode(out);
                }
            }
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

macro_rules! from_impl {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for MetaValue {
            fn from(x: $t) -> Self { MetaValue::$v(x) }
        }
    )*};
}
from_impl!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.as_bytes().to_vec())
    }
}

impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::String(s.into_bytes())
    }
}
