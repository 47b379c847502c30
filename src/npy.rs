//! NumPy `.npy` arrays (format versions 1, 2 and 3): parse float arrays, write f32 arrays.
//!
//! Accepted element types: `<f4`, `<f8` and `<f2` (converted to f32), and `<i4`/`<i8` (token
//! ids in reference files; converted to f32, exact below 2^24). Fortran-ordered arrays are
//! reordered into C order (never reinterpreted). Anything else is an error that says what was
//! found.

use half::f16;
use std::io::Write;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NpyError {
    #[error("not a .npy array: {0}")]
    Format(String),
    #[error("element type '{0}' is not supported (expected <f4, <f8, <f2, <i4 or <i8)")]
    Dtype(String),
    #[error("data is {found} bytes, shape {shape:?} of {dtype} needs {expected}")]
    Size {
        shape: Vec<usize>,
        dtype: String,
        expected: usize,
        found: usize,
    },
}

/// A float array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    /// The element type as stored (`<f4`, `<f8`, `<f2`).
    pub dtype: String,
    /// Whether the file stored it in Fortran order (the data here is always C order).
    pub was_fortran: bool,
    pub data: Vec<f32>,
}

/// A parsed `.npy` header: what the data section must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub descr: String,
    pub fortran: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length and the header dict).
    pub data_start: usize,
    /// Bytes of one element.
    pub elem: usize,
    /// Bytes of the data section.
    pub data_bytes: usize,
}

impl NpyHeader {
    pub fn n_elements(&self) -> usize {
        self.data_bytes / self.elem
    }
}

fn fmt_err(msg: impl Into<String>) -> NpyError {
    NpyError::Format(msg.into())
}

/// The header dict is a Python literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (2,
/// 3), }`. It is read token by token; as numpy requires, the keys must be exactly `descr`,
/// `fortran_order` and `shape` (a repeated key is refused: Python would keep the last value
/// where a naive reader keeps the first).
struct DictReader<'a> {
    s: &'a str,
}

#[derive(Debug)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl<'a> DictReader<'a> {
    fn skip_ws(&mut self) {
        self.s = self.s.trim_start();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if let Some(r) = self.s.strip_prefix(c) {
            self.s = r;
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> Result<String, NpyError> {
        self.skip_ws();
        let q = self
            .s
            .chars()
            .next()
            .filter(|&c| c == '\'' || c == '"')
            .ok_or_else(|| {
                fmt_err(format!(
                    "header: expected a quoted string at '{}'",
                    head(self.s)
                ))
            })?;
        let body = &self.s[1..];
        let end = body
            .find(q)
            .ok_or_else(|| fmt_err("header: unterminated string"))?;
        let v = &body[..end];
        if v.contains('\\') {
            return Err(fmt_err(format!(
                "header: escapes in '{v}' are not supported"
            )));
        }
        self.s = &body[end + 1..];
        Ok(v.to_string())
    }

    fn value(&mut self) -> Result<PyValue, NpyError> {
        self.skip_ws();
        if self.s.starts_with(['\'', '"']) {
            return self.string().map(PyValue::Str);
        }
        for (word, b) in [("True", true), ("False", false)] {
            if let Some(r) = self.s.strip_prefix(word) {
                self.s = r;
                return Ok(PyValue::Bool(b));
            }
        }
        if !self.eat('(') {
            return Err(fmt_err(format!(
                "header: unexpected value at '{}'",
                head(self.s)
            )));
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(PyValue::Tuple(dims));
            }
            self.skip_ws();
            let n = self
                .s
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(self.s.len());
            let d = self.s[..n]
                .parse::<usize>()
                .map_err(|_| fmt_err(format!("shape entry at '{}' is not a size", head(self.s))))?;
            self.s = &self.s[n..];
            let _ = self.eat('L');
            dims.push(d);
            if !self.eat(',') && !self.s.trim_start().starts_with(')') {
                return Err(fmt_err(format!(
                    "header: expected ',' or ')' at '{}'",
                    head(self.s)
                )));
            }
        }
    }
}

fn head(s: &str) -> &str {
    let mut end = s.len().min(16);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse_dict(h: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let mut r = DictReader { s: h };
    if !r.eat('{') {
        return Err(fmt_err("header is not a dict"));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if r.eat('}') {
            break;
        }
        let key = r.string()?;
        if !r.eat(':') {
            return Err(fmt_err(format!("header: no ':' after '{key}'")));
        }
        let v = r.value()?;
        let dup = match (key.as_str(), v) {
            ("descr", PyValue::Str(d)) => descr.replace(d).is_some(),
            ("fortran_order", PyValue::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", PyValue::Tuple(t)) => shape.replace(t).is_some(),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(fmt_err(format!(
                    "header: '{key}' has the wrong kind of value {v:?}"
                )))
            }
            (k, _) => return Err(fmt_err(format!("header has an unexpected key '{k}'"))),
        };
        if dup {
            return Err(fmt_err(format!("header has the key '{key}' twice")));
        }
        if !r.eat(',') {
            if r.eat('}') {
                break;
            }
            return Err(fmt_err(format!(
                "header: expected ',' or '}}' at '{}'",
                head(r.s)
            )));
        }
    }
    if !r.s.trim().is_empty() {
        return Err(fmt_err(format!(
            "header: text after the dict: '{}'",
            head(r.s.trim())
        )));
    }
    Ok((
        descr.ok_or_else(|| fmt_err("header has no 'descr'"))?,
        fortran.ok_or_else(|| fmt_err("header has no 'fortran_order'"))?,
        shape.ok_or_else(|| fmt_err("header has no 'shape'"))?,
    ))
}

/// Longest header accepted (numpy writes 64 to a few hundred bytes; its own reader stops at
/// 10000 unless told otherwise).
pub const MAX_HEADER: usize = 1 << 16;

/// Parses the header at the start of `bytes` (which need not hold the data).
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt_err("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(fmt_err("truncated header length"));
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        v => return Err(fmt_err(format!("format version {v} is not 1, 2 or 3"))),
    };
    if hlen > MAX_HEADER {
        return Err(fmt_err(format!(
            "header length {hlen} is more than {MAX_HEADER}"
        )));
    }
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fmt_err("header runs past the end of the data"))?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| fmt_err("header is not UTF-8"))?;
    let (descr, fortran, shape) = parse_dict(header)?;
    let elem = match descr.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "<f2" => 2,
        d => return Err(NpyError::Dtype(d.to_string())),
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fmt_err("shape overflows"))?;
    let data_bytes = n
        .checked_mul(elem)
        .ok_or_else(|| fmt_err("size overflows"))?;
    Ok(NpyHeader {
        descr,
        fortran,
        shape,
        data_start: end,
        elem,
        data_bytes,
    })
}

/// Decodes one element type to f32, appending to `out`.
fn decode_into(descr: &str, body: &[u8], out: &mut Vec<f32>) {
    match descr {
        "<i4" => out.extend(
            body.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        ),
        "<i8" => out.extend(body.chunks_exact(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            i64::from_le_bytes(a) as f32
        })),
        "<f4" => out.extend(
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        "<f8" => out.extend(body.chunks_exact(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            f64::from_le_bytes(a) as f32
        })),
        _ => out.extend(
            body.chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// Reads exactly the data section `h` describes from `r` (which must end right after it),
/// converting to f32 a chunk at a time: memory is the array's f32 size, never the byte size on
/// top of it.
pub fn read_body(h: &NpyHeader, r: &mut dyn std::io::Read) -> Result<NpyArray, NpyError> {
    const CHUNK: usize = 1 << 20;
    let mut flat = Vec::with_capacity(h.n_elements());
    let mut buf = vec![0u8; CHUNK.min(h.data_bytes.max(1))];
    let mut left = h.data_bytes;
    let short = |found: usize| NpyError::Size {
        shape: h.shape.clone(),
        dtype: h.descr.clone(),
        expected: h.data_bytes,
        found,
    };
    while left > 0 {
        let n = left.min(buf.len());
        r.read_exact(&mut buf[..n])
            .map_err(|_| short(h.data_bytes - left))?;
        decode_into(&h.descr, &buf[..n], &mut flat);
        left -= n;
    }
    let mut one = [0u8; 1];
    if matches!(r.read(&mut one), Ok(n) if n > 0) {
        return Err(short(h.data_bytes + 1));
    }
    let data = if h.fortran && h.shape.len() > 1 {
        fortran_to_c(&flat, &h.shape)
    } else {
        flat
    };
    Ok(NpyArray {
        shape: h.shape.clone(),
        dtype: h.descr.clone(),
        was_fortran: h.fortran,
        data,
    })
}

/// Parses a whole `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    let h = parse_header(bytes)?;
    let body = &bytes[h.data_start..];
    if body.len() != h.data_bytes {
        return Err(NpyError::Size {
            shape: h.shape,
            dtype: h.descr,
            expected: h.data_bytes,
            found: body.len(),
        });
    }
    read_body(&h, &mut &body[..])
}

/// Reorders a column-major array into row-major order.
fn fortran_to_c(src: &[f32], shape: &[usize]) -> Vec<f32> {
    let nd = shape.len();
    // Fortran strides: the first index varies fastest.
    let mut fstride = vec![1usize; nd];
    for k in 1..nd {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(src.len());
    let mut idx = vec![0usize; nd];
    for _ in 0..src.len() {
        let off: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        out.push(src[off]);
        // Advance a C-order (last index fastest) counter.
        for k in (0..nd).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Writes an f32 array in C order as `.npy` version 1.
pub fn write_f32(w: &mut dyn Write, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for v in data {
        w.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Writes an f32 array to `path` atomically (temporary file, then rename: see
/// [`crate::output::AtomicFile`]); a full disk or a signal leaves nothing under `path`.
pub fn write_f32_file(
    path: &std::path::Path,
    shape: &[usize],
    data: &[f32],
) -> Result<(), crate::output::OutputError> {
    let f = crate::output::AtomicFile::create(path)?;
    let io = |e| crate::output::OutputError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f.file());
        write_f32(&mut w, shape, data).map_err(io)?;
        w.flush().map_err(io)?;
    }
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, body: &[u8], version: u8) -> Vec<u8> {
        let h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut out = b"\x93NUMPY".to_vec();
        out.push(version);
        out.push(0);
        if version == 1 {
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_types_versions_and_fortran() {
        let f4: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse(&npy("<f4", false, "(2, 3)", &f4, 1)).unwrap();
        assert_eq!(
            (a.shape.clone(), a.data.clone()),
            (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        // The same bytes in Fortran order are the transpose's layout: [[1,3,5],[2,4,6]].
        let f = parse(&npy("<f4", true, "(2, 3)", &f4, 2)).unwrap();
        assert_eq!(f.data, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert!(f.was_fortran);
        let f8: Vec<u8> = [0.5f64, -1.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy("<f8", false, "(2,)", &f8, 3)).unwrap().data,
            vec![0.5, -1.25]
        );
        let f2: Vec<u8> = [f16::from_f32(1.5), f16::from_f32(-2.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy("<f2", false, "(2,)", &f2, 1)).unwrap().data,
            vec![1.5, -2.0]
        );
        let scalar = parse(&npy("<f4", false, "()", &1.0f32.to_le_bytes(), 1)).unwrap();
        assert_eq!((scalar.shape.len(), scalar.data.len()), (0, 1));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(
            parse(&npy(">f4", false, "(1,)", &[0; 4], 1)),
            Err(NpyError::Dtype(">f4".into()))
        );
        assert_eq!(
            parse(&npy("<u2", false, "(1,)", &[0; 2], 1)),
            Err(NpyError::Dtype("<u2".into()))
        );
        assert_eq!(
            parse(&npy("<i4", false, "(1,)", &7i32.to_le_bytes(), 1))
                .unwrap()
                .data,
            vec![7.0]
        );
        assert!(matches!(
            parse(&npy("<f4", false, "(2,)", &[0; 4], 1)),
            Err(NpyError::Size { .. })
        ));
        assert!(matches!(
            parse(b"PK\x03\x04xxxxxxxx"),
            Err(NpyError::Format(_))
        ));
        let mut t = npy("<f4", false, "(1,)", &[0; 4], 1);
        t.truncate(20);
        assert!(matches!(parse(&t), Err(NpyError::Format(_))));
    }

    #[test]
    fn header_dict_is_read_as_python_would_or_refused() {
        let raw = |h: &str, body: &[u8]| {
            let mut out = b"\x93NUMPY\x01\x00".to_vec();
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(body);
            out
        };
        let one = 1.0f32.to_le_bytes();
        // Python keeps the last of a repeated key; we refuse rather than guess.
        let e = parse(&raw(
            "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
            &one,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("'descr' twice"), "{e}");
        let e = parse(&raw(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 'y'}",
            &one,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unexpected key 'x'"), "{e}");
        let e = parse(&raw("{'descr': '<f4', 'shape': (1,)}", &one)).unwrap_err();
        assert!(e.to_string().contains("no 'fortran_order'"), "{e}");
        // Double quotes, no trailing comma, no spaces: still the same dict.
        let a = parse(&raw(
            "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(1,)}",
            &one,
        ))
        .unwrap();
        assert_eq!(a.data, vec![1.0]);
        let e = parse(&raw(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, x)}",
            &one,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not a size"), "{e}");
    }

    #[test]
    fn write_then_read() {
        let mut out = Vec::new();
        write_f32(&mut out, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((out.len() - 16) % 64, 0);
        let a = parse(&out).unwrap();
        assert_eq!((a.shape, a.data), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    }
}
