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

struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

fn fmt_err(msg: impl Into<String>) -> NpyError {
    NpyError::Format(msg.into())
}

/// The value following `'key':` in the header dict, up to the next top-level comma or brace.
fn dict_value<'a>(h: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pat = format!("'{key}'");
    let at = h
        .find(&pat)
        .ok_or_else(|| fmt_err(format!("header has no '{key}'")))?;
    let rest = h[at + pat.len()..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| fmt_err(format!("header: no ':' after '{key}'")))?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else if let Some(r) = rest.strip_prefix('\'') {
        r.find('\'').map(|i| i + 2)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| fmt_err(format!("header: unterminated value of '{key}'")))?;
    Ok(rest[..end].trim())
}

fn parse_header(h: &str) -> Result<Header, NpyError> {
    let descr = dict_value(h, "descr")?.trim_matches('\'').to_string();
    let fortran = match dict_value(h, "fortran_order")? {
        "True" => true,
        "False" => false,
        other => return Err(fmt_err(format!("fortran_order is '{other}'"))),
    };
    let shape_s = dict_value(h, "shape")?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| fmt_err(format!("shape '{shape_s}' is not a tuple")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| fmt_err(format!("shape entry '{s}' is not a size")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

/// Parses a whole `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
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
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fmt_err("header runs past the end of the data"))?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| fmt_err("header is not UTF-8"))?;
    let h = parse_header(header)?;
    let elem = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        "<f2" => 2,
        "<i4" => 4,
        "<i8" => 8,
        d => return Err(NpyError::Dtype(d.to_string())),
    };
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fmt_err("shape overflows"))?;
    let body = &bytes[end..];
    let expected = n
        .checked_mul(elem)
        .ok_or_else(|| fmt_err("size overflows"))?;
    if body.len() != expected {
        return Err(NpyError::Size {
            shape: h.shape,
            dtype: h.descr,
            expected,
            found: body.len(),
        });
    }
    let flat: Vec<f32> = match h.descr.as_str() {
        "<i4" => body
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        "<i8" => body
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a) as f32
            })
            .collect(),
        "<f4" => body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        _ => body
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    let data = if h.fortran && h.shape.len() > 1 {
        fortran_to_c(&flat, &h.shape)
    } else {
        flat
    };
    Ok(NpyArray {
        shape: h.shape,
        dtype: h.descr,
        was_fortran: h.fortran,
        data,
    })
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
    fn write_then_read() {
        let mut out = Vec::new();
        write_f32(&mut out, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((out.len() - 16) % 64, 0);
        let a = parse(&out).unwrap();
        assert_eq!((a.shape, a.data), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    }
}
