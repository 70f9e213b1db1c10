"""Safetensors and GGUF headers validated by hand, reading at most the header.

A weights file must be exactly what its header says (every tensor inside the file, no overlaps,
no trailing bytes, plausible counts) before a third-party library maps it, so that a 576-byte
file cannot describe a 7-billion-parameter model.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .records import Target
from .safety import _read_json, _require_regular
from .util import _describe_exc, _esc, _excerpt, _is_int, _short

_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_ST_SUBBYTE_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_GGUF_HEADER = 256 << 20  # metadata + tensor table; a 262k-token vocabulary takes ~6 MB
_MAX_GGUF_KEEP = 4096  # longer metadata strings (chat templates) are skipped, not kept
_MAX_GGUF_TOKENS = 1 << 21
_GGUF_COUNT_LIMITS = ((".block_count", 256), (".expert_count", 1024), (".expert_used_count", 1024))


class _GGUFArray:
    """A metadata array, kept as its length only (token lists, scores, merges)."""

    def __init__(self, item_type: int, count: int) -> None:
        self.item_type, self.count = item_type, count


def _read_gguf_header(path: Path) -> int:
    """Validate a GGUF file's header by hand, reading at most its header; returns the number of tensor elements.

    Every length is checked against the bytes left before it is used, each tensor's byte range
    (from its ggml type and shape) must lie in the file and not overlap another, and layer, expert
    and vocabulary counts must be plausible: a 576-byte file cannot describe a 7-billion-parameter
    model, nor metadata ask for 1.6 million layers.
    """
    import gguf

    size = _require_regular(path)

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} ({size:,} bytes) is not a valid GGUF file: {reason}")

    limit = min(size, _MAX_GGUF_HEADER)
    with open(path, "rb") as fh:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if n > limit - pos:
                raise bad(
                    f"it claims {n:,} more bytes at offset {pos:,} than "
                    + (
                        "the file holds (truncated?)"
                        if limit == size
                        else f"a header may take ({_MAX_GGUF_HEADER >> 20} MiB)"
                    )
                )
            data = fh.read(n)
            if len(data) != n:
                raise bad("the file shrank while being read")
            pos += n
            return data

        def skip(n: int) -> None:
            nonlocal pos
            if n > limit - pos:
                raise bad(f"a value at offset {pos:,} claims {n:,} bytes, more than the file holds")
            fh.seek(n, os.SEEK_CUR)
            pos += n

        def unpack(fmt: str) -> Any:
            return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

        def string(keep: bool = True) -> str | None:
            n = unpack("<Q")
            if not keep or n > _MAX_GGUF_KEEP:
                skip(n)
                return None
            return take(n).decode("utf-8", "replace")

        def value(vtype: int, depth: int = 0) -> Any:
            if vtype in _GGUF_SCALARS:
                return unpack(_GGUF_SCALARS[vtype])
            if vtype == _GGUF_STRING:
                return string()
            if vtype == _GGUF_ARRAY and depth < 2:
                item_type, count = unpack("<I"), unpack("<Q")
                if item_type in _GGUF_SCALARS:
                    skip(count * struct.calcsize(_GGUF_SCALARS[item_type]))
                elif item_type in (_GGUF_STRING, _GGUF_ARRAY):
                    if count > (limit - pos) // 8:
                        raise bad(f"an array at offset {pos:,} claims {count:,} items, more than the file holds")
                    for _ in range(count):
                        string(keep=False) if item_type == _GGUF_STRING else value(item_type, depth + 1)
                else:
                    raise bad(f"an array at offset {pos:,} has an unknown item type {item_type}")
                return _GGUFArray(item_type, count)
            raise bad(f"a metadata value at offset {pos:,} has an unknown type {vtype}")

        if take(4) != b"GGUF":
            raise bad("it does not start with 'GGUF'")
        version = unpack("<I")
        if version not in (2, 3):
            raise bad(f"version {version} is not supported (2 or 3; big-endian files are not)")
        n_tensors, n_kv = unpack("<Q"), unpack("<Q")
        if n_kv > (limit - pos) // 13 or n_tensors > (limit - pos) // 24:
            raise bad(f"it claims {n_kv:,} metadata entries and {n_tensors:,} tensors, more than the file holds")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string() or ""
            metadata[key] = value(unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = string() or "?"
            n_dims = unpack("<I")
            if not 1 <= n_dims <= 4:
                raise bad(f"tensor {_excerpt(name, 60)} has {n_dims} dimensions (1 to 4)")
            dims = [unpack("<Q") for _ in range(n_dims)]
            tensors.append((name, dims, unpack("<I"), unpack("<Q")))
        header_end = pos

    for key, limit_count in _GGUF_COUNT_LIMITS:
        for name, val in metadata.items():
            if name.endswith(key) and _is_int(val) and val > limit_count:
                raise bad(f"{_esc(name, 60)}={val} is implausible (limit {limit_count})")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, _GGUFArray) and tokens.count > _MAX_GGUF_TOKENS:
        raise bad(f"its vocabulary claims {tokens.count:,} tokens (limit {_MAX_GGUF_TOKENS:,})")
    alignment = metadata.get("general.alignment", 32)
    if not _is_int(alignment) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise bad(f"general.alignment={_excerpt(alignment)} is not a power of two")
    data_start = -(-header_end // alignment) * alignment
    if not tensors:
        raise bad("it holds no tensors")
    sizes = getattr(gguf, "GGML_QUANT_SIZES", {})
    spans = []
    elements = 0
    for name, dims, ttype, offset in tensors:
        shown = _excerpt(name, 60)
        try:
            block, type_size = sizes[gguf.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise bad(f"tensor {shown} has an unknown ggml type {ttype}") from None
        if dims[0] % block:
            raise bad(f"tensor {shown} has {dims[0]} columns, not a multiple of its block size {block}")
        numel = math.prod(dims)
        nbytes = numel // block * type_size
        begin = data_start + offset
        if offset % alignment or begin + nbytes > size:
            raise bad(f"tensor {shown} ({nbytes:,} bytes at offset {offset:,}) lies outside the file (truncated?)")
        spans.append((begin, begin + nbytes, shown))
        elements += numel
    spans.sort()
    for (_b0, end0, name0), (begin1, _e1, name1) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise bad(f"tensors {name0} and {name1} overlap")
    if size - max(end for _b, end, _n in spans) > alignment:
        raise bad(f"{size - max(end for _b, end, _n in spans):,} bytes follow its last tensor")
    return elements


def _read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a safetensors file's header by hand; returns {name: (dtype, shape)}.

    The safetensors library is robust, but a clear message naming the file and its size is
    worth a few lines, and a header claiming more data than the file holds is caught here.
    """
    size = _require_regular(path)

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(
            f"{path} ({size} bytes) is not a valid safetensors file: {reason}; "
            "re-export it with safetensors.torch.save_file"
        )

    if size < 8:
        raise bad("shorter than the 8-byte header length")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise bad(f"the header claims {header_len} bytes but only {size - 8} follow (truncated?)")
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise bad(f"the header claims {header_len} bytes (limit {_MAX_SAFETENSORS_HEADER})")
        raw = fh.read(header_len)
    if len(raw) != header_len:
        raise bad("the file shrank while being read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"the header is not JSON ({_describe_exc(exc, with_type=False)})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_len = size - 8 - header_len
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise bad(f"the entry for {_excerpt(name, 60)} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or (dtype not in _ST_ITEMSIZE and dtype not in _ST_SUBBYTE_BITS):
            raise bad(f"tensor {_excerpt(name, 60)} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {_excerpt(name, 60)} has an invalid shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise bad(f"tensor {_excerpt(name, 60)} has invalid data_offsets {_short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(
                f"tensor {_excerpt(name, 60)} lies outside the file "
                f"(bytes {begin}..{end} of a {data_len}-byte data section; "
                "truncated?)"
            )
        numel = math.prod(shape)
        if dtype in _ST_ITEMSIZE:
            nbytes = numel * _ST_ITEMSIZE[dtype]
        else:
            nbytes = -(-numel * _ST_SUBBYTE_BITS[dtype] // 8)
        if end - begin != nbytes:
            raise bad(
                f"tensor {_excerpt(name, 60)} ({dtype} {tuple(shape)}) needs {nbytes} bytes "
                f"but its offsets span {end - begin}"
            )
        spans.append((begin, end, name))
        tensors[name] = (dtype, tuple(shape))
    spans.sort()
    for (_b0, end0, name0), (begin1, _e1, name1) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise bad(f"tensors {_excerpt(name0, 60)} and {_excerpt(name1, 60)} overlap")
    covered = max((end for _b, end, _n in spans), default=0)
    if data_len > covered:  # the safetensors library refuses it too; say so before copying a padded file
        raise bad(f"{data_len - covered:,} bytes follow its last tensor")
    return tensors


def _check_safetensors_index(folder: Path) -> None:
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        return
    index = _read_json(index_path, 32 << 20)  # a 405B model's index is ~100 KB
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path} has no valid 'weight_map' (tensor name -> shard file)")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not (folder / shard).is_file():
            raise CheckpointError(f"{index_path} refers to shard {shard!r}, which is not a file in {folder}")


def _check_weight_headers(target: Target) -> None:
    """Validate the safetensors and GGUF headers of the original files (reading only their headers)."""
    for path in target.files:
        lower = path.name.lower()
        if lower.endswith(".safetensors"):
            _read_safetensors_header(path)
        elif lower.endswith(".gguf") and target.weights == "gguf":
            with open(path, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    continue  # _load_gguf says so
            try:
                import gguf  # noqa: F401
            except ImportError:
                continue  # _load_gguf says what to install
            _read_gguf_header(path)
