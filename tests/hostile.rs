//! Hostile GGUF files: every rule the reader enforces, each broken on purpose, each answered by
//! its own typed error (never a panic, never an allocation sized by a number read from the
//! file).
//!
//! Most cases start from one valid file written by `GgufWriter` (metadata of every value type,
//! a string array, Q4_0/F16/Q8_0/F32 tensors) and overwrite a field in place; the layouts the
//! writer cannot produce (an empty key, a 64-byte tensor name, 0 dimensions, nested arrays,
//! huge lengths) are assembled byte by byte with `Raw`.
//!
//! Every parse goes through `open`, which also records the largest single allocation made
//! while parsing (a counting global allocator, per thread) and fails the test if it exceeds
//! `ALLOC_LIMIT`: a count or length taken from the file must be checked against the bytes left
//! before anything is reserved for it.

use jq::gguf::{
    GgufError, GgufFile, GgufWriter, MetaValue, TensorView, Value, ValueType, MAX_ARRAY_DEPTH,
    MAX_ARRAY_ELEMENTS, MAX_STRING_LENGTH,
};
use jq::quant::{quantize_to_vec, GgmlType};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Allocation watch

struct Watch;

thread_local! {
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may already be gone while a thread is being torn down.
    let _ = BIGGEST.try_with(|b| {
        if size > b.get() {
            b.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only records
// sizes in a thread-local `Cell` (const-initialised, no destructor, never allocates).
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// No parse of a file of a few KiB may reserve more than this in one allocation.
const ALLOC_LIMIT: usize = 256 << 10;
/// Nor take longer than this (release build; the slowest legitimate case is microseconds).
const TIME_LIMIT: Duration = Duration::from_millis(500);

/// Parses `bytes`, checking the allocation and time bounds.
fn open(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    assert!(bytes.len() < 1 << 20, "hostile inputs are small");
    BIGGEST.with(|b| b.set(0));
    let t = Instant::now();
    let r = GgufFile::from_vec(bytes);
    let took = t.elapsed();
    let biggest = BIGGEST.with(Cell::get);
    assert!(
        biggest <= ALLOC_LIMIT,
        "parse allocated {biggest} bytes at once ({r:?})"
    );
    assert!(took <= TIME_LIMIT, "parse took {took:?} ({r:?})");
    r
}

/// Parses `bytes`, expecting an error matching the pattern; returns the error.
macro_rules! assert_err {
    ($bytes:expr, $($pat:tt)+) => {{
        match open($bytes) {
            Err(e) => {
                assert!(matches!(e, $($pat)+), "wrong error: {e:?}\n  ({e})\n  expected {}", stringify!($($pat)+));
                e
            }
            Ok(f) => panic!("accepted {f:?}, expected {}", stringify!($($pat)+)),
        }
    }};
}

/// Parses `bytes`, expecting success.
fn assert_ok(bytes: Vec<u8>) -> GgufFile {
    match open(bytes) {
        Ok(f) => {
            check_views(&f);
            f
        }
        Err(e) => panic!("refused: {e:?} ({e})"),
    }
}

/// What the reader promises of an accepted file: every tensor's bytes lie inside the file and
/// have the declared size, every metadata entry decodes (arrays all the way down).
fn check_views(f: &GgufFile) {
    let file = f.bytes().as_ptr_range();
    let file = file.start as usize..file.end as usize;
    for (i, t) in f.tensors().enumerate() {
        assert!(std::ptr::eq(t.info, &f.tensor_infos()[i]));
        let d = t.data.as_ptr_range();
        assert!(file.start <= d.start as usize && d.end as usize <= file.end);
        assert_eq!(t.data.len() as u64, t.info.size, "{}", t.name());
        assert_eq!(
            t.info.size,
            t.ty().tensor_bytes(&t.info.ne).unwrap(),
            "{}",
            t.name()
        );
        assert_eq!(
            (f.data_offset() + t.info.offset) as usize,
            d.start as usize - file.start
        );
    }
    let mut n = 0;
    for (k, v) in f.metadata() {
        assert!(!k.is_empty());
        walk(&v, 0);
        n += 1;
    }
    assert_eq!(n, f.index().kvs.len(), "some metadata value did not decode");
}

fn walk(v: &Value<'_>, depth: u32) {
    assert!(depth <= MAX_ARRAY_DEPTH);
    if let Value::Array(a) = v {
        let mut n = 0u64;
        for e in a.iter() {
            assert_eq!(e.value_type(), a.elem_type());
            walk(&e, depth + 1);
            n += 1;
        }
        assert_eq!(n, a.len(), "array iterates fewer elements than its count");
    }
}

// ---------------------------------------------------------------------------------------------
// The valid file and where its fields are

const TENSORS: [(&str, GgmlType, &[u64]); 4] = [
    ("t.q4_0", GgmlType::Q4_0, &[64, 2]),
    ("t.f16", GgmlType::F16, &[7]),
    ("t.q8_0", GgmlType::Q8_0, &[32, 1, 2]),
    // Last, and a multiple of the alignment: the file ends exactly at its last byte.
    ("t.f32", GgmlType::F32, &[8, 4]),
];

fn valid_writer(alignment: Option<u32>) -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add("general.alignment", a).unwrap();
    }
    w.add("general.architecture", "hostile").unwrap();
    w.add("k.u8", 7u8).unwrap();
    w.add("k.i8", -7i8).unwrap();
    w.add("k.u16", 700u16).unwrap();
    w.add("k.i16", -700i16).unwrap();
    w.add("k.u32", 70_000u32).unwrap();
    w.add("k.i32", -70_000i32).unwrap();
    w.add("k.f32", 0.25f32).unwrap();
    w.add("k.bool", true).unwrap();
    w.add("k.u64", u64::MAX).unwrap();
    w.add("k.i64", i64::MIN).unwrap();
    w.add("k.f64", -1.5e300f64).unwrap();
    w.add("k.str", "héllo ✓").unwrap();
    w.add("k.bytes", MetaValue::String(vec![0xff, 0x00, 0x80]))
        .unwrap();
    w.add("k.strs", MetaValue::strings(["a", "", "ccc"]))
        .unwrap();
    w.add(
        "k.arr",
        MetaValue::array(ValueType::F32, [1.0f32, -2.0, 3.5]),
    )
    .unwrap();
    w.add(
        "k.empty",
        MetaValue::array(ValueType::U64, Vec::<u64>::new()),
    )
    .unwrap();
    let mut data = Vec::new();
    for (i, (name, ty, ne)) in TENSORS.iter().enumerate() {
        w.add_tensor(name, *ty, ne).unwrap();
        let n: u64 = ne.iter().product();
        let x = jq::synth::weights(i as u64 + 1, n as usize, 2.0);
        data.push(quantize_to_vec(*ty, &x).unwrap());
    }
    (w, data)
}

fn write(w: &GgufWriter, data: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out, |i, _, o| {
        o.write_all(&data[i])
            .map_err(|e| GgufError::io("<test>", e))
    })
    .unwrap();
    out
}

fn valid() -> Vec<u8> {
    let (w, data) = valid_writer(None);
    write(&w, &data)
}

/// Byte positions of one metadata entry of the valid file.
#[derive(Debug, Clone, Copy)]
struct KvAt {
    /// The key's u64 length.
    key: usize,
    /// The value's u32 type id.
    ty: usize,
    /// The value itself.
    value: usize,
}

fn kv_at(bytes: &[u8], key: &str) -> KvAt {
    let f = GgufFile::from_vec(bytes.to_vec()).unwrap();
    let kv = f.index().kvs.iter().find(|kv| kv.key == key).unwrap();
    let at = kv.offset as usize;
    assert_eq!(&bytes[at + 8..at + 8 + key.len()], key.as_bytes());
    KvAt {
        key: at,
        ty: at + 8 + key.len(),
        value: at + 12 + key.len(),
    }
}

/// Byte positions of one tensor info of the valid file.
#[derive(Debug, Clone, Copy)]
struct TensorAt {
    /// The name's u64 length.
    name: usize,
    n_dims: usize,
    /// `ne[0]`.
    ne: usize,
    ty: usize,
    offset: usize,
}

fn tensor_at(bytes: &[u8], name: &str) -> TensorAt {
    let f = GgufFile::from_vec(bytes.to_vec()).unwrap();
    let info = f.tensor(name).unwrap().info;
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let header = &bytes[..f.data_offset() as usize];
    let hits: Vec<usize> = header
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == &needle[..])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "tensor name {name} is not unique in the header"
    );
    let n_dims = hits[0] + 8 + name.len();
    let ty = n_dims + 4 + 8 * info.ne.len();
    TensorAt {
        name: hits[0],
        n_dims,
        ne: n_dims + 4,
        ty,
        offset: ty + 4,
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The valid file with one change.
fn mutated(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = valid();
    f(&mut b);
    b
}

// ---------------------------------------------------------------------------------------------
// Hand assembly

/// A GGUF file written field by field, with no check at all.
#[derive(Debug, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }

    fn u8(mut self, v: u8) -> Raw {
        self.0.push(v);
        self
    }

    fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, v: &[u8]) -> Raw {
        self.0.extend_from_slice(v);
        self
    }

    /// A `gguf_string`.
    fn gstr(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }

    /// A key and its value type; the value follows.
    fn key(self, k: &[u8], ty: ValueType) -> Raw {
        self.gstr(k).u32(ty.id())
    }

    /// An array header (element type and count) without the type id of the value itself.
    fn arr(self, elem: ValueType, n: u64) -> Raw {
        self.u32(elem.id()).u64(n)
    }

    fn tensor(self, name: &[u8], ne: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.gstr(name).u32(ne.len() as u32);
        for &n in ne {
            r = r.u64(n);
        }
        r.u32(ty).u64(offset)
    }

    fn pad(mut self, align: usize) -> Raw {
        let n = self.0.len().div_ceil(align) * align;
        self.0.resize(n, 0);
        self
    }

    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// One tensor, its data zeroed (`data_len` bytes after the padding).
fn one_tensor(name: &[u8], ne: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::new(3, 1, 0)
        .tensor(name, ne, ty, offset)
        .pad(32)
        .zeros(data_len)
        .done()
}

/// One metadata entry whose value bytes follow its type id.
fn one_kv(key: &[u8], ty: ValueType, value: Raw) -> Vec<u8> {
    Raw::new(3, 0, 1).key(key, ty).bytes(&value.0).done()
}

fn val() -> Raw {
    Raw(Vec::new())
}

// ---------------------------------------------------------------------------------------------
// The valid file itself

#[test]
fn valid_file_parses() {
    let (w, data) = valid_writer(None);
    let bytes = write(&w, &data);
    let f = assert_ok(bytes.clone());
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.get_u8("k.u8").unwrap(), 7);
    assert_eq!(f.get_i8("k.i8").unwrap(), -7);
    assert_eq!(f.get_u16("k.u16").unwrap(), 700);
    assert_eq!(f.get_i16("k.i16").unwrap(), -700);
    assert_eq!(f.get_u32("k.u32").unwrap(), 70_000);
    assert_eq!(f.get_i32("k.i32").unwrap(), -70_000);
    assert_eq!(f.get_f32("k.f32").unwrap(), 0.25);
    assert!(f.get_bool("k.bool").unwrap());
    assert_eq!(f.get_u64("k.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("k.i64").unwrap(), i64::MIN);
    assert_eq!(f.get_f64("k.f64").unwrap(), -1.5e300);
    assert_eq!(f.get_str("k.str").unwrap(), "héllo ✓");
    assert_eq!(f.get("k.bytes"), Some(Value::String(&[0xff, 0x00, 0x80])));
    let strs: Vec<&[u8]> = f.get_array("k.strs").unwrap().strings().collect();
    assert_eq!(strs, [&b"a"[..], b"", b"ccc"]);
    assert_eq!(
        f.get_array("k.arr").unwrap().to_f64_vec().unwrap(),
        [1.0, -2.0, 3.5]
    );
    assert!(f.get_array("k.empty").unwrap().is_empty());
    assert_eq!(f.tensor_infos().len(), TENSORS.len());
    for (t, d) in f.tensors().zip(&data) {
        assert_eq!(t.data, &d[..], "{}", t.name());
        assert_eq!(t.to_f32().unwrap().len() as u64, t.info.n_elements());
    }
    // The last tensor ends the file: no byte of it is padding.
    let last = f.tensor_infos().last().unwrap();
    assert_eq!(
        f.data_offset() + last.offset + last.size,
        bytes.len() as u64
    );
}

// ---------------------------------------------------------------------------------------------
// Truncation

#[test]
fn truncated_at_every_offset() {
    let full = valid();
    let f = GgufFile::from_vec(full.clone()).unwrap();
    let data_offset = f.data_offset() as usize;
    // End of the tensor infos: where the padding before the data starts.
    let last = tensor_at(&full, TENSORS[3].0);
    let infos_end = last.offset + 8;
    assert!(infos_end < data_offset);
    let (mut trunc, mut too_large, mut oob) = (0, 0, 0);
    for len in 0..full.len() {
        let e = match open(full[..len].to_vec()) {
            Ok(_) => panic!("a {len}-byte prefix of a {}-byte file parses", full.len()),
            Err(e) => e,
        };
        match e {
            // The data section is cut: the header is whole, a tensor runs past the end.
            GgufError::TensorOutOfBounds { file_len, end, .. } if len >= data_offset => {
                assert_eq!(file_len, len as u64);
                assert!(end > file_len);
                oob += 1;
            }
            // A field, or the padding before the data, is cut.
            GgufError::Truncated {
                offset,
                needed,
                available,
                ..
            } if len < data_offset => {
                assert!(offset <= len as u64, "{len}: {e}");
                assert_eq!(available, len as u64 - offset, "{len}: {e}");
                assert!(needed > available, "{len}: {e}");
                if len >= infos_end {
                    assert!(e.to_string().contains("padding"), "{len}: {e}");
                }
                trunc += 1;
            }
            // The counts are checked against the bytes left before anything is read: a cut
            // header cannot hold 4 tensor infos or 17 entries.
            GgufError::TooLarge {
                ref what,
                count,
                limit,
                ..
            } if len < data_offset => {
                assert!(
                    what == "tensor count" || what == "metadata key count",
                    "{len}: {e}"
                );
                assert!(count > limit, "{len}: {e}");
                too_large += 1;
            }
            e => panic!("{len}-byte prefix: unexpected {e:?}"),
        }
    }
    assert_eq!(trunc + too_large + oob, full.len());
    assert_eq!(oob, full.len() - data_offset);
    assert!(trunc > 0 && too_large > 0);
    assert_ok(full);
}

#[test]
fn trailing_padding_after_the_last_tensor_is_optional() {
    // A last tensor whose size is not a multiple of the alignment: the writer pads after it,
    // and a file without that padding is still whole (ggml checks offset + size only).
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F16, &[3]).unwrap();
    let data = vec![vec![1u8, 2, 3, 4, 5, 6]];
    let full = write(&w, &data);
    let f = assert_ok(full.clone());
    let end = (f.data_offset() + 6) as usize;
    assert!(end < full.len());
    for len in end..=full.len() {
        assert_eq!(
            assert_ok(full[..len].to_vec()).tensor("t").unwrap().data,
            &data[0][..]
        );
    }
    assert_err!(full[..end - 1].to_vec(), GgufError::TensorOutOfBounds { end: x, .. } if x == end as u64);
}

// ---------------------------------------------------------------------------------------------
// Huge counts and lengths

#[test]
fn huge_tensor_and_kv_counts() {
    for n in [u64::MAX, i64::MAX as u64 + 1, 1 << 40, 1 << 20] {
        let b = mutated(|b| put_u64(b, 8, n));
        assert_err!(b, GgufError::TooLarge { ref what, count, offset: 8, .. } if what == "tensor count" && count == n);
        let b = mutated(|b| put_u64(b, 16, n));
        assert_err!(b, GgufError::TooLarge { ref what, count, offset: 16, .. } if what == "metadata key count" && count == n);
    }
}

#[test]
fn kv_count_2_pow_40_in_40_bytes_does_not_allocate() {
    let b = Raw::new(3, 0, 1 << 40).zeros(16).done();
    assert_eq!(b.len(), 40);
    let t = Instant::now();
    // `open` also fails the test if any single allocation exceeds ALLOC_LIMIT.
    assert_err!(b, GgufError::TooLarge { ref what, count, limit, .. }
        if what == "metadata key count" && count == 1 << 40 && limit == 1);
    assert!(t.elapsed() < Duration::from_millis(250));
    let b = Raw::new(3, 1 << 40, 0).zeros(16).done();
    assert_err!(b, GgufError::TooLarge { ref what, count, limit: 1, .. }
        if what == "tensor count" && count == 1 << 40);
    // The largest count a 40-byte file can hold passes the count check and fails on bytes.
    let b = Raw::new(3, 0, 1).zeros(16).done();
    assert_err!(
        b,
        GgufError::EmptyKey {
            index: 0,
            offset: 24
        }
    );
}

/// Counts are bounded by the bytes left, so in a large file a crafted count is still large:
/// the reader must not reserve memory for it up front (`Vec::with_capacity(n_kv)` of 56-byte
/// entries is 4 times the file size, past any machine's memory for a model-sized file, and a
/// failed allocation aborts the process). A sparse 8 GiB file, a few KiB on disk, with the
/// largest count it can hold, must be refused without any large allocation.
#[test]
fn largest_counts_of_a_huge_file_reserve_nothing() {
    const LEN: u64 = 8 << 30;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.gguf");
    let cases = [
        // Every key empty: refused at the first one.
        (Raw::new(3, 0, (LEN - 24) / 14), "kv"),
        // Every tensor info empty (name "", 0 dims, F32, offset 0): refused at the second.
        (Raw::new(3, (LEN - 16) / 24, 0), "tensor"),
    ];
    for (header, what) in cases {
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, &header.0).unwrap();
        file.set_len(LEN).unwrap();
        drop(file);
        BIGGEST.with(|b| b.set(0));
        let t = Instant::now();
        let r = GgufFile::open(&path);
        let took = t.elapsed();
        let biggest = BIGGEST.with(Cell::get);
        match what {
            "kv" => assert!(
                matches!(r, Err(GgufError::EmptyKey { index: 0, .. })),
                "{r:?}"
            ),
            _ => assert!(
                matches!(r, Err(GgufError::DuplicateTensor { ref name, .. }) if name.is_empty()),
                "{r:?}"
            ),
        }
        assert!(
            biggest <= ALLOC_LIMIT,
            "{what}: allocated {biggest} bytes at once"
        );
        assert!(took <= TIME_LIMIT, "{what}: took {took:?}");
    }
}

#[test]
fn huge_key_length() {
    for n in [u64::MAX, MAX_STRING_LENGTH + 1] {
        let b = Raw::new(3, 0, 1).u64(n).zeros(32).done();
        assert_err!(b, GgufError::TooLarge { ref what, count, limit, offset: 24 }
            if what == "length of key #0" && count == n && limit == MAX_STRING_LENGTH);
    }
    // Within ggml's limit but past the end of the file.
    let b = Raw::new(3, 0, 1).u64(MAX_STRING_LENGTH).zeros(32).done();
    assert_err!(b, GgufError::Truncated { ref what, needed, offset: 32, available: 32 }
        if what == "key #0" && needed == MAX_STRING_LENGTH);
    // The same in the valid file.
    let k = kv_at(&valid(), "k.str");
    let b = mutated(|b| put_u64(b, k.key, u64::MAX));
    assert_err!(
        b,
        GgufError::TooLarge {
            count: u64::MAX,
            ..
        }
    );
}

#[test]
fn huge_string_value_length() {
    let v = kv_at(&valid(), "k.str");
    for n in [u64::MAX, MAX_STRING_LENGTH + 1] {
        let b = mutated(|b| put_u64(b, v.value, n));
        assert_err!(b, GgufError::TooLarge { ref what, count, .. }
            if what == "length of string value of key 'k.str'" && count == n);
    }
    let b = mutated(|b| put_u64(b, v.value, 1 << 20));
    assert_err!(b, GgufError::Truncated { needed, .. } if needed == 1 << 20);
    // A string inside an array.
    let s = kv_at(&valid(), "k.strs");
    let b = mutated(|b| put_u64(b, s.value + 12, u64::MAX));
    assert_err!(b, GgufError::TooLarge { ref what, count: u64::MAX, .. }
        if what == "length of string value of key 'k.strs'");
}

#[test]
fn huge_array_counts() {
    let a = kv_at(&valid(), "k.arr");
    let count_at = a.value + 4;
    for n in [u64::MAX, MAX_ARRAY_ELEMENTS + 1] {
        let b = mutated(|b| put_u64(b, count_at, n));
        assert_err!(b, GgufError::TooLarge { ref what, count, limit, offset }
            if what == "array length of key 'k.arr'" && count == n
               && limit == MAX_ARRAY_ELEMENTS && offset == count_at as u64);
    }
    // Allowed by ggml's limit, but more than the file can hold: refused before walking.
    for elem in [
        ValueType::U8,
        ValueType::U64,
        ValueType::String,
        ValueType::Array,
    ] {
        let b = one_kv(
            b"a",
            ValueType::Array,
            val().arr(elem, MAX_ARRAY_ELEMENTS).zeros(64),
        );
        assert_err!(b, GgufError::Truncated { needed, available: 64, .. } if needed >= MAX_ARRAY_ELEMENTS);
    }
    let s = kv_at(&valid(), "k.strs");
    let b = mutated(|b| put_u64(b, s.value + 4, 1 << 29));
    assert_err!(b, GgufError::Truncated { ref what, .. } if what.contains("elements of array 'k.strs'"));
}

#[test]
fn huge_dimensions() {
    let t = tensor_at(&valid(), "t.f32");
    // ggml reads ne as int64 and refuses negatives.
    for n in [u64::MAX, i64::MAX as u64 + 1] {
        let b = mutated(|b| put_u64(b, t.ne, n));
        assert_err!(b, GgufError::BadShape { ref name, ref reason, ref ne, .. }
            if name == "t.f32" && reason.contains("negative") && ne == &[n, 4]);
        let b = mutated(|b| put_u64(b, t.ne + 8, n));
        assert_err!(b, GgufError::BadShape { ref reason, .. } if reason.contains("negative"));
    }
    // Fits int64, the element count too, the byte count does not fit u64.
    let b = one_tensor(b"x", &[1 << 62], GgmlType::F32.id(), 0, 0);
    assert_err!(b, GgufError::BadShape { ref reason, .. } if reason.contains("size in bytes"));
    // Fits everything but the file.
    let b = mutated(|b| put_u64(b, t.ne + 8, 1 << 40));
    assert_err!(b, GgufError::TensorOutOfBounds { ref name, .. } if name == "t.f32");
    // Data offset + size overflow u64: 8 * (2^61 - 1) bytes of F64.
    let b = one_tensor(b"x", &[(1 << 61) - 1], GgmlType::F64.id(), 0, 8);
    assert_err!(
        b,
        GgufError::TensorOutOfBounds {
            end: u64::MAX,
            file_len: 72,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Dimensions and shapes

#[test]
fn zero_dims_is_one_element() {
    // ggml reads n_dims 0 as a scalar: ne = [1, 1, 1, 1].
    let b = Raw::new(3, 1, 0)
        .tensor(b"scalar", &[], GgmlType::F32.id(), 0)
        .pad(32)
        .bytes(&1.5f32.to_le_bytes())
        .done();
    let f = assert_ok(b);
    let t = f.tensor("scalar").unwrap();
    assert_eq!(t.info.ne, Vec::<u64>::new());
    assert_eq!(t.info.ne4(), [1, 1, 1, 1]);
    assert_eq!(t.info.n_elements(), 1);
    assert_eq!(t.info.size, 4);
    assert_eq!(t.to_f32().unwrap(), [1.5]);
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::I64] {
        let f = assert_ok(one_tensor(b"s", &[], ty.id(), 0, ty.type_size() as usize));
        let info = &f.tensor_infos()[0];
        assert!(info.ne.is_empty());
        assert_eq!(info.size, ty.type_size(), "{ty}");
    }
    // One element is not a whole Q4_0 block.
    let b = one_tensor(b"s", &[], GgmlType::Q4_0.id(), 0, 18);
    assert_err!(b, GgufError::BadShape { ref reason, ref ne, .. } if ne.is_empty() && reason.contains("block size"));
}

#[test]
fn zero_sized_tensors_are_accepted() {
    let b = Raw::new(3, 2, 0)
        .tensor(b"a", &[0, 1 << 40], GgmlType::Q8_0.id(), 0)
        .tensor(b"b", &[4, 0], GgmlType::F32.id(), 0)
        .pad(32)
        .done();
    let f = assert_ok(b);
    assert!(f
        .tensors()
        .all(|t| t.data.is_empty() && t.info.n_elements() == 0));
}

#[test]
fn too_many_dims() {
    for n in [5, 64, u32::MAX] {
        let b = Raw::new(3, 1, 0)
            .gstr(b"t5")
            .u32(n)
            .zeros(5 * 8 + 12)
            .pad(32)
            .done();
        assert_err!(b, GgufError::TooManyDims { ref name, n_dims, offset: 24 } if name == "t5" && n_dims == n);
    }
    let t = tensor_at(&valid(), "t.f32");
    assert_err!(
        mutated(|b| put_u32(b, t.n_dims, 5)),
        GgufError::TooManyDims { n_dims: 5, .. }
    );
    // Four is the most, and fine.
    let f = assert_ok(one_tensor(b"t4", &[2, 1, 1, 3], GgmlType::F32.id(), 0, 24));
    assert_eq!(f.tensor_infos()[0].ne, [2, 1, 1, 3]);
}

#[test]
fn element_count_overflowing_int64() {
    for ne in [
        &[1u64 << 32, 1 << 32][..],
        &[1 << 31, 1 << 31, 2],
        &[1 << 16, 1 << 16, 1 << 16, 1 << 16],
        &[3, i64::MAX as u64 / 2],
    ] {
        let b = one_tensor(b"x", ne, GgmlType::F32.id(), 0, 0);
        assert_err!(b, GgufError::BadShape { ref reason, ne: ref got, .. } if reason.contains("overflows int64") && got == ne);
    }
    // i64::MAX elements exactly is representable (and then too big in bytes).
    let b = one_tensor(b"x", &[i64::MAX as u64], GgmlType::I8.id(), 0, 0);
    assert_err!(b, GgufError::TensorOutOfBounds { .. });
}

#[test]
fn partial_blocks() {
    let t = tensor_at(&valid(), "t.q4_0");
    for ne0 in [1, 16, 33, 63, 65] {
        let b = mutated(|b| put_u64(b, t.ne, ne0));
        assert_err!(b, GgufError::BadShape { ref name, ref reason, .. }
            if name == "t.q4_0" && reason.contains("not a multiple of the Q4_0 block size 32"));
    }
    // Only ne0 is split into blocks.
    let f = assert_ok(one_tensor(
        b"q",
        &[32, 3, 5],
        GgmlType::Q4_0.id(),
        0,
        18 * 15,
    ));
    assert_eq!(f.tensor_infos()[0].size, 18 * 15);
}

#[test]
fn unknown_tensor_types() {
    let t = tensor_at(&valid(), "t.q4_0");
    // 43: one past GGML_TYPE_COUNT; 4, 5: Q4_2, Q4_3 (removed); 31..=33, 36..=38: removed.
    for id in [43, 4, 5, 31, 32, 33, 36, 37, 38, 1000, u32::MAX] {
        let b = mutated(|b| put_u32(b, t.ty, id));
        assert_err!(b, GgufError::UnknownTensorType { ref name, type_id, offset }
            if name == "t.q4_0" && type_id == id && offset == t.ty as u64);
    }
}

#[test]
fn invalid_value_types() {
    let k = kv_at(&valid(), "k.u8");
    for id in [13, 14, 255, u32::MAX] {
        let b = mutated(|b| put_u32(b, k.ty, id));
        assert_err!(b, GgufError::InvalidValueType { ref key, type_id, offset }
            if key == "k.u8" && type_id == id && offset == k.ty as u64);
    }
    // As an array's element type.
    let a = kv_at(&valid(), "k.arr");
    let b = mutated(|b| put_u32(b, a.value, 13));
    assert_err!(b, GgufError::InvalidValueType { ref key, type_id: 13, .. } if key == "k.arr");
    // As the element type of an array inside an array.
    let b = one_kv(
        b"n",
        ValueType::Array,
        val().arr(ValueType::Array, 1).u32(13).u64(0),
    );
    assert_err!(b, GgufError::InvalidValueType { ref key, type_id: 13, offset: 49 } if key == "n");
}

// ---------------------------------------------------------------------------------------------
// Data offsets

#[test]
fn tensor_offsets() {
    let full = valid();
    let infos: Vec<_> = GgufFile::from_vec(full.clone())
        .unwrap()
        .tensor_infos()
        .to_vec();
    let expect: Vec<u64> = infos.iter().map(|t| t.offset).collect();
    assert_eq!(expect, [0, 96, 128, 224]);
    let at: Vec<TensorAt> = TENSORS.iter().map(|t| tensor_at(&full, t.0)).collect();
    let bad = |i: usize, found: u64| {
        let b = mutated(|b| put_u64(b, at[i].offset, found));
        assert_err!(b, GgufError::BadTensorOffset { ref name, found: f, expected, alignment: 32 }
            if name == TENSORS[i].0 && f == found && expected == expect[i]);
    };
    // Misaligned.
    bad(1, 97);
    bad(3, 225);
    bad(0, 1);
    // Out of the file.
    bad(3, 1 << 40);
    bad(3, u64::MAX);
    bad(0, u64::MAX - 31);
    // Overlapping: two tensors at the same offset, or one inside the previous.
    bad(1, 0);
    bad(2, 96);
    bad(2, 100);
    // Aligned but with a gap.
    bad(1, 128);
    bad(3, 256);
    // Not in running order: two offsets swapped.
    let b = mutated(|b| {
        let (x, y) = (get_u64(b, at[1].offset), get_u64(b, at[2].offset));
        put_u64(b, at[1].offset, y);
        put_u64(b, at[2].offset, x);
    });
    assert_err!(b, GgufError::BadTensorOffset { ref name, found: 128, expected: 96, .. } if name == "t.f16");
    // In order, but the last one larger than what is left of the file.
    let b = mutated(|b| put_u64(b, at[3].ne + 8, 5));
    let len = full.len() as u64;
    assert_err!(b, GgufError::TensorOutOfBounds { ref name, start, end, file_len }
        if name == "t.f32" && file_len == len && start == len - 128 && end == len + 32);
}

// ---------------------------------------------------------------------------------------------
// Keys and names

#[test]
fn duplicate_key() {
    let full = valid();
    let i8_at = kv_at(&full, "k.i8");
    let b = mutated(|b| b[i8_at.key + 8..i8_at.key + 12].copy_from_slice(b"k.u8"));
    assert_err!(b, GgufError::DuplicateKey { ref key, offset } if key == "k.u8" && offset == i8_at.key as u64);
    // Of different types, hand-assembled.
    let b = Raw::new(3, 0, 2)
        .key(b"same", ValueType::U8)
        .u8(1)
        .key(b"same", ValueType::String)
        .gstr(b"x")
        .done();
    assert_err!(b, GgufError::DuplicateKey { ref key, offset: 41 } if key == "same");
}

#[test]
fn duplicate_tensor_name() {
    let full = valid();
    let t = tensor_at(&full, "t.f32");
    let b = mutated(|b| b[t.name + 8..t.name + 13].copy_from_slice(b"t.f16"));
    assert_err!(b, GgufError::DuplicateTensor { ref name, offset } if name == "t.f16" && offset == t.name as u64);
}

#[test]
fn empty_key() {
    // (Padded: an entry with an empty key is smaller than the least the key count check
    // assumes, 14 bytes, and a short file would be refused for its count first.)
    let b = Raw::new(3, 0, 1)
        .key(b"", ValueType::U8)
        .u8(1)
        .zeros(8)
        .done();
    assert_err!(
        b,
        GgufError::EmptyKey {
            index: 0,
            offset: 24
        }
    );
    let b = Raw::new(3, 0, 2)
        .key(b"a", ValueType::U8)
        .u8(1)
        .key(b"", ValueType::U8)
        .u8(1)
        .zeros(8)
        .done();
    assert_err!(
        b,
        GgufError::EmptyKey {
            index: 1,
            offset: 38
        }
    );
}

#[test]
fn invalid_utf8_key_and_tensor_name() {
    let full = valid();
    let k = kv_at(&full, "k.str");
    // A stray continuation byte, a truncated sequence, an overlong NUL, a surrogate.
    for bad in [&[0x80u8][..], &[0xc3], &[0xc0, 0x80], &[0xed, 0xa0, 0x80]] {
        let b = mutated(|b| b[k.key + 10..k.key + 10 + bad.len()].copy_from_slice(bad));
        assert_err!(b, GgufError::InvalidUtf8 { ref what, offset } if what.starts_with("key #") && offset == k.key as u64);
    }
    let t = tensor_at(&full, "t.f16");
    let b = mutated(|b| b[t.name + 9] = 0xff);
    assert_err!(b, GgufError::InvalidUtf8 { ref what, offset } if what == "name of tensor #1" && offset == t.name as u64);
    // Non-UTF-8 string values are fine (byte tokens): only keys and names are checked.
    assert_eq!(
        assert_ok(full).get("k.bytes"),
        Some(Value::String(&[0xff, 0, 0x80]))
    );
}

#[test]
fn tensor_name_length() {
    let name63 = vec![b'n'; 63];
    let f = assert_ok(one_tensor(&name63, &[1], GgmlType::F32.id(), 0, 4));
    assert_eq!(f.tensor_infos()[0].name.len(), 63);
    let name64 = vec![b'n'; 64];
    let b = one_tensor(&name64, &[1], GgmlType::F32.id(), 0, 4);
    assert_err!(
        b,
        GgufError::TensorNameTooLong {
            len: 64,
            offset: 24
        }
    );
    let b = one_tensor(&[b'n'; 1000], &[1], GgmlType::F32.id(), 0, 4);
    assert_err!(
        b,
        GgufError::TensorNameTooLong {
            len: 1000,
            offset: 24
        }
    );
}

// ---------------------------------------------------------------------------------------------
// general.alignment

fn with_alignment(ty: ValueType, value: Raw) -> Vec<u8> {
    Raw::new(3, 1, 1)
        .key(b"general.alignment", ty)
        .bytes(&value.0)
        .tensor(b"t", &[3], GgmlType::F32.id(), 0)
        .pad(64)
        .zeros(64)
        .done()
}

#[test]
fn alignment_rules() {
    let b = with_alignment(ValueType::U64, val().u64(64));
    assert_err!(b, GgufError::WrongType { ref key, ref expected, ref found }
        if key == "general.alignment" && expected == "u32" && found == "u64");
    let b = with_alignment(ValueType::I32, val().u32(64));
    assert_err!(b, GgufError::WrongType { ref found, .. } if found == "i32");
    let b = with_alignment(ValueType::String, val().gstr(b"64"));
    assert_err!(b, GgufError::WrongType { ref found, .. } if found == "str");
    for a in [0, 48, 3, u32::MAX] {
        let b = with_alignment(ValueType::U32, val().u32(a));
        assert_err!(b, GgufError::BadAlignment { value } if value == u64::from(a));
    }
    // Accepted: 1 (no padding at all) and 64, written by the writer.
    for a in [1u32, 64] {
        let (w, data) = valid_writer(Some(a));
        let f = assert_ok(write(&w, &data));
        assert_eq!(f.alignment(), u64::from(a));
        assert_eq!(f.data_offset() % u64::from(a), 0);
        for (t, d) in f.tensors().zip(&data) {
            assert_eq!(t.data, &d[..]);
            assert_eq!(t.info.offset % u64::from(a), 0);
        }
    }
    // Alignment 1: the data starts right after the last tensor info.
    let b = Raw::new(3, 1, 1)
        .key(b"general.alignment", ValueType::U32)
        .u32(1)
        .tensor(b"t", &[3], GgmlType::F32.id(), 0)
        .zeros(12)
        .done();
    let len = b.len() as u64;
    assert_eq!(assert_ok(b).data_offset(), len - 12);
    // A huge power of two is valid, and leaves a small file short of its data section.
    let b = with_alignment(ValueType::U32, val().u32(1 << 31));
    assert_err!(b, GgufError::Truncated { ref what, .. } if what.contains("padding"));
}

// ---------------------------------------------------------------------------------------------
// Magic and version

#[test]
fn versions_and_magic() {
    for v in [0u32, 1, 4, 0x0300_0000, 0x0200_0000, u32::MAX] {
        let b = mutated(|b| put_u32(b, 4, v));
        assert_err!(b, GgufError::UnsupportedVersion { version, .. } if version == v);
    }
    let e = assert_err!(
        mutated(|b| put_u32(b, 4, 0x0300_0000)),
        GgufError::UnsupportedVersion { .. }
    );
    assert!(e.to_string().contains("byte-swapped"), "{e}");
    // Version 2 has version 3's layout.
    let f = assert_ok(mutated(|b| put_u32(b, 4, 2)));
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensor_infos().len(), TENSORS.len());
    for magic in [b"GGUG", b"FUGG", b"gguf", b"GGML", b"\0\0\0\0"] {
        let b = mutated(|b| b[..4].copy_from_slice(magic));
        assert_err!(b, GgufError::BadMagic { ref found } if found == magic);
    }
    assert_err!(b"GGU".to_vec(), GgufError::Truncated { ref what, .. } if what == "magic");
    assert_err!(
        Vec::new(),
        GgufError::Truncated {
            needed: 4,
            available: 0,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Values

#[test]
fn bool_is_any_nonzero_byte() {
    let k = kv_at(&valid(), "k.bool");
    for (byte, expect) in [
        (0u8, false),
        (1, true),
        (2, true),
        (0x80, true),
        (0xff, true),
    ] {
        let f = assert_ok(mutated(|b| b[k.value] = byte));
        assert_eq!(f.get_bool("k.bool").unwrap(), expect, "byte {byte:#x}");
    }
}

/// Arrays of arrays: of u32, of strings, and of arrays of different element types.
fn nested_arrays_file() -> Vec<u8> {
    Raw::new(3, 0, 3)
        // [[1, 2, 3], [], [4]]
        .key(b"nest.u32", ValueType::Array)
        .arr(ValueType::Array, 3)
        .arr(ValueType::U32, 3)
        .u32(1)
        .u32(2)
        .u32(3)
        .arr(ValueType::U32, 0)
        .arr(ValueType::U32, 1)
        .u32(4)
        // [["a", "bc"], [""]]
        .key(b"nest.str", ValueType::Array)
        .arr(ValueType::Array, 2)
        .arr(ValueType::String, 2)
        .gstr(b"a")
        .gstr(b"bc")
        .arr(ValueType::String, 1)
        .gstr(b"")
        // Inner arrays of different element types: [[9u8], ["x"]]
        .key(b"nest.mixed", ValueType::Array)
        .arr(ValueType::Array, 2)
        .arr(ValueType::U8, 1)
        .u8(9)
        .arr(ValueType::String, 1)
        .gstr(b"x")
        .done()
}

#[test]
fn nested_arrays_are_read() {
    let b = nested_arrays_file();
    let f = assert_ok(b);
    let outer = f.get_array("nest.u32").unwrap();
    assert_eq!(outer.elem_type(), ValueType::Array);
    let got: Vec<Vec<u64>> = outer
        .iter()
        .map(|v| v.as_array().unwrap().to_u64_vec().unwrap())
        .collect();
    assert_eq!(got, [vec![1, 2, 3], vec![], vec![4]]);
    assert_eq!(
        outer.get(2).unwrap().as_array().unwrap().get(0),
        Some(Value::U32(4))
    );
    assert_eq!(outer.get(3), None);
    let strs: Vec<Vec<&[u8]>> = f
        .get_array("nest.str")
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().strings().collect())
        .collect();
    assert_eq!(strs, [vec![&b"a"[..], b"bc"], vec![b""]]);
    let mixed: Vec<MetaValue> = f
        .get_array("nest.mixed")
        .unwrap()
        .iter()
        .map(|v| v.to_owned_value())
        .collect();
    assert_eq!(
        mixed,
        [
            MetaValue::array(ValueType::U8, [9u8]),
            MetaValue::strings(["x"])
        ]
    );
}

/// A value `levels` arrays deep: `[[[... [7u32] ...]]]`.
fn nested(levels: u32) -> Vec<u8> {
    let mut r = Raw::new(3, 0, 1).key(b"deep", ValueType::Array);
    for _ in 1..levels {
        r = r.arr(ValueType::Array, 1);
    }
    r.arr(ValueType::U32, 1).u32(7).done()
}

#[test]
fn array_nesting_depth() {
    let f = assert_ok(nested(MAX_ARRAY_DEPTH));
    let mut v = f.get("deep").unwrap();
    for _ in 0..MAX_ARRAY_DEPTH {
        v = v.as_array().unwrap().get(0).unwrap();
    }
    assert_eq!(v, Value::U32(7));
    let limit = u64::from(MAX_ARRAY_DEPTH);
    assert_err!(nested(MAX_ARRAY_DEPTH + 1), GgufError::TooLarge { ref what, count, limit: l, .. }
        if what == "array nesting depth of key 'deep'" && count == limit + 1 && l == limit);
    // Far deeper: refused at the same depth, no stack overflow.
    let b = nested(50_000);
    assert_err!(b, GgufError::TooLarge { count, .. } if count == limit + 1);
}

// ---------------------------------------------------------------------------------------------
// Random damage

/// Parses damaged bytes: never a panic; an accepted file keeps the reader's promises.
fn survive(bytes: Vec<u8>) {
    if let Ok(f) = open(bytes) {
        check_views(&f);
        for t in f.tensors() {
            decode(&t);
        }
    }
}

fn decode(t: &TensorView<'_>) {
    if t.ty().has_codec() && t.info.n_elements() < 1 << 20 {
        assert_eq!(t.to_f32().unwrap().len() as u64, t.info.n_elements());
    }
}

#[test]
fn every_header_byte_overwritten() {
    let full = valid();
    let data_offset = GgufFile::from_vec(full.clone()).unwrap().data_offset() as usize;
    for at in 0..data_offset {
        let old = full[at];
        for new in [
            0x00,
            0xff,
            0x80,
            0x7f,
            0x01,
            old.wrapping_add(1),
            old.wrapping_sub(1),
        ] {
            let mut b = full.clone();
            b[at] = new;
            survive(b);
        }
    }
}

/// The valid file and the length of its header (its data offset).
static VALID: LazyLock<(Vec<u8>, usize)> = LazyLock::new(|| {
    let b = valid();
    let h = GgufFile::from_vec(b.clone()).unwrap().data_offset() as usize;
    (b, h)
});

#[derive(Debug, Clone)]
enum Damage {
    /// Overwrite one byte.
    Byte(usize, u8),
    /// Flip one bit.
    Bit(usize, u8),
    /// Overwrite 4 or 8 bytes with an interesting little-endian integer.
    Word(usize, u64, bool),
    /// Cut the file.
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    let interesting = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(1 << 32),
        Just(1 << 40),
        Just(u64::from(u32::MAX)),
        Just(MAX_ARRAY_ELEMENTS),
        0u64..64,
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Byte(i, b)),
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Damage::Bit(i, b)),
        3 => (any::<usize>(), interesting, any::<bool>()).prop_map(|(i, v, w)| Damage::Word(i, v, w)),
        1 => any::<usize>().prop_map(Damage::Truncate),
    ]
}

fn apply(b: &mut Vec<u8>, d: &Damage) {
    if b.is_empty() {
        return;
    }
    let n = b.len();
    match *d {
        Damage::Byte(i, v) => b[i % n] = v,
        Damage::Bit(i, bit) => b[i % n] ^= 1 << bit,
        Damage::Word(i, v, wide) => {
            let bytes = v.to_le_bytes();
            let k = if wide { 8 } else { 4 };
            let i = i % n;
            let k = k.min(n - i);
            b[i..i + k].copy_from_slice(&bytes[..k]);
        }
        Damage::Truncate(i) => b.truncate(i % (n + 1)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        rng_seed: RngSeed::Fixed(0x6767_7566),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_damage_never_panics(damages in prop::collection::vec(damage(), 1..6),
                                  header_only in any::<bool>()) {
        let (valid, header) = &*VALID;
        let mut b = valid.clone();
        let header = *header;
        // Most interesting bytes are in the header: aim there half of the time.
        for d in &damages {
            let d = match (header_only, d.clone()) {
                (true, Damage::Byte(i, v)) => Damage::Byte(i % header, v),
                (true, Damage::Bit(i, v)) => Damage::Bit(i % header, v),
                (true, Damage::Word(i, v, w)) => Damage::Word(i % header, v, w),
                (_, d) => d,
            };
            apply(&mut b, &d);
        }
        survive(b);
    }
}

/// Writes seed inputs for the fuzzer into `fuzz/corpus/gguf_reader/` (git-ignored). Run with
/// `cargo test --release --test hostile -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes the fuzzing corpus seeds"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let (w1, d1) = valid_writer(Some(1));
    let mut meta_only = GgufWriter::new();
    meta_only.add("general.architecture", "m").unwrap();
    meta_only
        .add(
            "tokenizer.ggml.tokens",
            MetaValue::strings(["<s>", "a", "\u{2581}b"]),
        )
        .unwrap();
    let scalar = Raw::new(3, 2, 0)
        .tensor(b"s", &[], GgmlType::F16.id(), 0)
        .tensor(b"q", &[32, 2], GgmlType::Q4_0.id(), 32)
        .pad(32)
        .zeros(32 + 36)
        .done();
    let seeds = [
        ("valid.gguf", valid()),
        ("align1.gguf", write(&w1, &d1)),
        ("nested.gguf", nested_arrays_file()),
        ("deep.gguf", nested(6)),
        ("meta_only.gguf", write(&meta_only, &[])),
        ("scalar_q4.gguf", scalar),
    ];
    for (name, bytes) in seeds {
        assert_ok(bytes.clone());
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
