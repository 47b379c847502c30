#!/usr/bin/env python3
"""Variants of a GGUF written by gguf-py (an implementation independent of ours), for tests.

  gguf_variants.py requant IN OUT --type q4_0|q8_0
      every quantized 2-D weight dequantized (gguf-py's numpy decoders) and quantized again to
      the type; F32/F16 tensors and the metadata are copied (general.file_type updated).
  gguf_variants.py split IN OUT_PREFIX --max-tensors N [--small-first-shard]
      the same model as a gguf-split set, written by gguf-py's GGUFWriter with
      split_max_tensors, as llama.cpp's converter writes split files: OUT_PREFIX-00001-of-0000K.gguf...
      (the first part holds the metadata and the first N tensors; with --small-first-shard it
      holds only the metadata).

Outputs are written under a temporary name and renamed, so an interrupted run leaves nothing.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

FILE_TYPES = {"q4_0": (Q.Q4_0, 2), "q8_0": (Q.Q8_0, 7)}


def copy_metadata(r: gguf.GGUFReader, w: gguf.GGUFWriter, file_type=None):
    """Every key but the ones GGUFWriter writes itself and the split keys (as gguf-py's own
    gguf_new_metadata.py copies them)."""
    for field in r.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE or name.startswith("split."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if name == gguf.Keys.General.FILE_TYPE and file_type is not None:
            value = file_type
        w.add_key_value(name, value, vtype, sub_type=sub)


def raw_tensor(w, t):
    w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)


def requant(src: Path, dst: Path, ty: str):
    qtype, file_type = FILE_TYPES[ty]
    r = gguf.GGUFReader(src)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(tmp, arch)
    copy_metadata(r, w, file_type)
    for t in r.tensors:
        if t.tensor_type in (Q.F32, Q.F16) or len(t.shape) < 2:
            raw_tensor(w, t)
            continue
        f = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        q = gguf.quants.quantize(f, qtype)
        w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)


def split(src: Path, prefix: Path, max_tensors: int, small_first: bool):
    r = gguf.GGUFReader(src)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    # gguf-py names the parts after the path's stem: PREFIX-00001-of-0000N.gguf.
    tmpdir = prefix.parent / f".split.{os.getpid()}.tmp"
    tmpdir.mkdir()
    out = tmpdir / (prefix.name + ".gguf")
    w = gguf.GGUFWriter(out, arch, split_max_tensors=max_tensors, small_first_shard=small_first)
    copy_metadata(r, w)
    for t in r.tensors:
        raw_tensor(w, t)
    w.write_header_to_file(out)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for p in sorted(tmpdir.iterdir()):
        os.replace(p, prefix.parent / p.name)
        print(prefix.parent / p.name)
    tmpdir.rmdir()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("requant")
    a.add_argument("src", type=Path)
    a.add_argument("dst", type=Path)
    a.add_argument("--type", choices=sorted(FILE_TYPES), required=True)
    b = sub.add_parser("split")
    b.add_argument("src", type=Path)
    b.add_argument("prefix", type=Path)
    b.add_argument("--max-tensors", type=int, required=True)
    b.add_argument("--small-first-shard", action="store_true")
    args = ap.parse_args()
    if args.cmd == "requant":
        requant(args.src, args.dst, args.type)
    else:
        split(args.src, args.prefix, args.max_tensors, args.small_first_shard)


if __name__ == "__main__":
    sys.exit(main())
