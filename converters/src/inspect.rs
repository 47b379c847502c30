//! `jq-convert inspect`: everything in a GGUF header, for people (`text`) and tools (`json`).

use jq::gguf::{GgufModel, Value};
use jq::quant::GgmlType;
use serde_json::{json, Map, Number, Value as Json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Arrays longer than this are cut short unless `--full` is given.
pub const SUMMARY_ITEMS: u64 = 8;
const JSON_SUMMARY_ITEMS: u64 = 64;

fn fmt_f64(v: f64) -> String {
    format!("{v}")
}

fn fmt_str(s: &[u8]) -> String {
    match std::str::from_utf8(s) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("bytes{s:02x?}"),
    }
}

fn fmt_value(v: &Value<'_>, full: bool) -> String {
    match *v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => fmt_f64(x),
        Value::Bool(x) => x.to_string(),
        Value::String(s) => fmt_str(s),
        Value::Array(a) => {
            let shown = if full {
                a.len()
            } else {
                a.len().min(SUMMARY_ITEMS)
            };
            let items: Vec<String> = a
                .iter()
                .take(shown as usize)
                .map(|e| fmt_value(&e, full))
                .collect();
            let more = if shown < a.len() {
                format!(", ... ({} items)", a.len())
            } else {
                String::new()
            };
            format!("[{}{more}]", items.join(", "))
        }
    }
}

fn json_float(v: f64, shortest: String) -> Json {
    if v.is_finite() {
        shortest
            .parse::<Number>()
            .map(Json::Number)
            .unwrap_or(Json::Null)
    } else {
        // JSON has no NaN or infinity: spell them as strings.
        Json::String(shortest)
    }
}

fn json_value(v: &Value<'_>, full: bool) -> Json {
    match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => x.into(),
        Value::I64(x) => x.into(),
        Value::F32(x) => json_float(f64::from(x), format!("{x}")),
        Value::F64(x) => json_float(x, format!("{x}")),
        Value::Bool(x) => x.into(),
        Value::String(s) => String::from_utf8_lossy(s).into_owned().into(),
        Value::Array(a) => {
            let take = if full {
                a.len()
            } else {
                a.len().min(JSON_SUMMARY_ITEMS)
            };
            Json::Array(
                a.iter()
                    .take(take as usize)
                    .map(|e| json_value(&e, full))
                    .collect(),
            )
        }
    }
}

/// The JSON description: `{"version", "alignment", "data_offset", "metadata": {key: {"type",
/// "value"[, "len", "truncated"]}}, "tensors": [{"name", "type", "shape" (ggml ne order),
/// "offset", "size"}]}`. A split set is described as the one model it is: the first part's
/// header fields and metadata (without the `split.*` keys), every part's tensors, each with its
/// `part`, and a `parts` list (path, data offset, tensor count).
pub fn to_json(f: &GgufModel, full: bool) -> Json {
    let mut meta = Map::new();
    for (k, v) in f.metadata() {
        let mut entry = Map::new();
        entry.insert("type".into(), v.type_name().into());
        entry.insert("value".into(), json_value(&v, full));
        if let Value::Array(a) = v {
            entry.insert("len".into(), a.len().into());
            if !full && a.len() > JSON_SUMMARY_ITEMS {
                entry.insert("truncated".into(), true.into());
            }
        }
        meta.insert(k.to_string(), Json::Object(entry));
    }
    let mut tensors: Vec<Json> = Vec::with_capacity(f.n_tensors());
    for (pi, p) in f.parts().iter().enumerate() {
        for t in p.tensor_infos() {
            let mut j = json!({
                "name": t.name,
                "type": t.ty.upper_name(),
                "shape": t.ne,
                "offset": t.offset,
                "size": t.size,
            });
            if f.is_split() {
                j["part"] = pi.into();
            }
            tensors.push(j);
        }
    }
    let m = f.meta();
    let mut j = json!({
        "version": m.version(),
        "alignment": m.alignment(),
        "data_offset": m.data_offset(),
        "metadata": meta,
        "tensors": tensors,
    });
    if f.is_split() {
        j["parts"] = f
            .parts()
            .iter()
            .map(|p| {
                json!({
                    "path": p.path().display().to_string(),
                    "data_offset": p.data_offset(),
                    "tensors": p.tensor_infos().len(),
                })
            })
            .collect();
    }
    j
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The human-readable report (a split set as one model, with a line per part).
pub fn to_text(f: &GgufModel, full: bool) -> String {
    let mut s = String::new();
    let infos: Vec<&jq::gguf::TensorInfo> = f.tensor_infos().collect();
    let m = f.meta();
    let _ = writeln!(
        s,
        "GGUF v{}  alignment {}  data offset {}  {} metadata keys  {} tensors",
        m.version(),
        m.alignment(),
        m.data_offset(),
        f.metadata().count(),
        infos.len()
    );
    if f.is_split() {
        let _ = writeln!(s, "split set of {} parts:", f.parts().len());
        for (i, p) in f.parts().iter().enumerate() {
            let _ = writeln!(
                s,
                "  part {i}: {}  data offset {}  {} tensors",
                p.path().display(),
                p.data_offset(),
                p.tensor_infos().len()
            );
        }
    }
    let _ = writeln!(s, "\nmetadata:");
    let kw = f.metadata().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in f.metadata() {
        let _ = writeln!(
            s,
            "  {k:<kw$}  {:<9} = {}",
            v.type_name(),
            fmt_value(&v, full)
        );
    }
    let _ = writeln!(s, "\ntensors:");
    let nw = infos.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let shape = |v: &[u64]| {
        format!(
            "[{}]",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let rows: Vec<(String, String)> = infos
        .iter()
        .map(|t| (shape(&t.shape()), shape(&t.ne)))
        .collect();
    let sw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(13);
    let ew = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(9);
    let _ = writeln!(
        s,
        "  {:>4}  {:<nw$}  {:<5}  {:<sw$}  {:<ew$}  {:>12}  {:>12}",
        "#", "name", "type", "shape (numpy)", "ne (ggml)", "offset", "bytes"
    );
    for (i, (t, (np, ne))) in infos.iter().zip(&rows).enumerate() {
        let t: &jq::gguf::TensorInfo = t;
        let _ = writeln!(
            s,
            "  {i:>4}  {:<nw$}  {:<5}  {np:<sw$}  {ne:<ew$}  {:>12}  {:>12}",
            t.name,
            t.ty.upper_name(),
            t.offset,
            t.size
        );
    }
    let mut per: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    for t in &infos {
        let e = per.entry(t.ty).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.size;
    }
    let _ = writeln!(s, "\ntotals:");
    let (mut n, mut el, mut by) = (0usize, 0u64, 0u64);
    for (ty, (c, e, b)) in &per {
        let _ = writeln!(
            s,
            "  {:<5}  {c:>5} tensors  {e:>14} elements  {b:>14} bytes  ({})",
            ty.upper_name(),
            human_bytes(*b)
        );
        n += c;
        el += e;
        by += b;
    }
    let _ = writeln!(
        s,
        "  {:<5}  {n:>5} tensors  {el:>14} elements  {by:>14} bytes  ({})",
        "all",
        human_bytes(by)
    );
    s
}
