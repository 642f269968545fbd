"""What a safetensors file declares, checked against the format's definition, and its values.

The header is parsed by hand (8-byte little-endian length, then JSON) because the safetensors
library only notices a truncated or overlapping file when a tensor is read; the values are read
with the library by memory map, a slice at a time, so a large file never sits in memory.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

# Bytes per element of each dtype the format defines (F4/F6 pack below a byte: not checked).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOATING = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F16", "BF16", "F32", "F64"}
_SLICE_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]


class MalformedSafetensors(ValueError):
    """The file is not a well-formed safetensors file; the message names what is wrong."""


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors a safetensors file declares, after checking that the header is well formed
    and that the data it declares is exactly what the file holds (no truncation, no overlap)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise MalformedSafetensors(f"{path.name} is not a safetensors file (only {size} bytes)")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise MalformedSafetensors(f"{path.name} has a header of {header_length} bytes but the file holds {size}")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedSafetensors(f"{path.name} has an unreadable safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise MalformedSafetensors(f"{path.name}'s safetensors header is not a JSON object")
    entries, spans = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape) or not (0 <= begin <= end):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise MalformedSafetensors(
                f"{path.name}'s header entry for {name!r} is malformed (needs dtype, shape and data_offsets)"
            ) from None
        if dtype in DTYPE_BYTES and end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise MalformedSafetensors(
                f"{path.name}: tensor {name!r} declares shape {list(shape)} of {dtype} "
                f"({math.prod(shape) * DTYPE_BYTES[dtype]} bytes) but {end - begin} bytes of data"
            )
        entries.append(TensorEntry(name, dtype, tuple(shape)))
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            kind = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
            raise MalformedSafetensors(f"{path.name}: tensor {name!r} {kind} in the data section")
        position = end
    data_length = size - 8 - header_length
    if position != data_length:
        raise MalformedSafetensors(
            f"{path.name} is damaged: its header declares {position} bytes of tensor data, "
            f"the file holds {data_length} (truncated or padded upload)"
        )
    return entries


def non_finite_tensors(path: Path, entries: list[TensorEntry]) -> list[str]:
    """Names of the floating tensors holding NaN or Inf, read a slice of rows at a time."""
    import torch
    from safetensors import safe_open

    found = []
    with safe_open(str(path), framework="pt") as handle:
        for entry in entries:
            if entry.dtype not in FLOATING or math.prod(entry.shape) == 0:
                continue
            tensor_slice = handle.get_slice(entry.name)
            if len(entry.shape) == 0:
                chunks = [handle.get_tensor(entry.name)]
            else:
                row_bytes = max(1, math.prod(entry.shape[1:]) * DTYPE_BYTES[entry.dtype])
                rows = max(1, _SLICE_BYTES // row_bytes)
                chunks = (tensor_slice[start : start + rows] for start in range(0, entry.shape[0], rows))
            for chunk in chunks:
                if entry.dtype.startswith("F8"):
                    chunk = chunk.to(torch.float32)
                if not bool(torch.isfinite(chunk).all()):
                    found.append(entry.name)
                    break
    return found
