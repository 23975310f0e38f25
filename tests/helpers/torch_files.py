"""Torch files written opcode by opcode: what torch.save writes, and what a crafted file may ask.

``torch.save`` cannot write a file that lies (a storage claiming more than its record holds, a
tuple nested a million deep: pickling it would recurse), so the pickles here are assembled
from protocol-2 opcodes and packed as torch packs them: a zip of ``<name>/data.pkl`` and one
stored record per storage (``zip_file``), or the stream of pickles and raw storages torch wrote
before 1.6 (``legacy_file``).
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # OrderedDict(): a tensor's backward hooks


def integer(value: int) -> bytes:
    if 0 <= value < 2**31:
        return b"J" + value.to_bytes(4, "little")
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def global_(name: str) -> bytes:
    module, attribute = name.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + attribute.encode() + b"\n"


def tuple_(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(name: str, *arguments: bytes) -> bytes:
    return global_(name) + tuple_(*arguments) + b"R"


def storage(numel: int, key: str = "0", kind: str = "torch.FloatStorage", legacy: bool = False) -> bytes:
    """The persistent id torch.save writes for a storage (a legacy one adds its view, None)."""
    return tuple_(text("storage"), global_(kind), text(key), text("cpu"), integer(numel),
                  *([b"N"] if legacy else [])) + b"Q"


def tensor(numel: int, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0,
           legacy: bool = False) -> bytes:
    """``torch._utils._rebuild_tensor_v2`` over a float storage of ``numel`` elements."""
    return call("torch._utils._rebuild_tensor_v2", storage(numel, legacy=legacy), integer(offset),
                tuple_(*map(integer, size)), tuple_(*map(integer, stride)), b"\x89", ORDERED_DICT)


def content(*items: tuple[str, bytes]) -> bytes:
    """A whole pickle of a dict of named items."""
    return b"\x80\x02}" + b"".join(text(key) + value + b"s" for key, value in items) + b"."


def zip_file(path: Path, pickled: bytes, records: dict[str, bytes] | None = None,
             method: int = zipfile.ZIP_STORED) -> Path:
    """``pickled`` as torch packs it, beside its storages' records (compressed with ``method``)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data, compress_type=method)
        archive.writestr("archive/version", "3\n")
    return path


def legacy_file(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """The format before torch 1.6: magic number, protocol, system, content, keys, then each
    storage as its element count and its bytes (float32 here)."""
    storages = storages or {}
    system = {"protocol_version": 1001, "little_endian": sys.byteorder == "little",
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(value, protocol=2) for value in (LEGACY_MAGIC, 1001, system)]
    parts += [pickled, pickle.dumps(list(storages), protocol=2)]
    parts += [(len(data) // 4).to_bytes(8, "little") + data for data in storages.values()]
    path.write_bytes(b"".join(parts))
    return path


def nested(kind: str, depth: int) -> bytes:
    """Opcodes of one value nesting ``depth`` containers, as a dict item's value: lists, dicts,
    tuples (as the key of a dict), or tuples built from marks."""
    if kind == "lists":
        return b"]" * depth + b"a" * (depth - 1)
    if kind == "dicts":
        return b"}" + (text("k") + b"}") * (depth - 1) + b"s" * (depth - 1)
    if kind == "tuple-key":
        return b"}" + b")" + b"\x85" * (depth - 1) + b"K\x01s"
    if kind == "marks":
        return b"(" * depth + b"t" * depth
    raise ValueError(kind)


def nested_value(kind: str, depth: int) -> object:
    """What :func:`nested` unpickles to."""
    if kind in ("tuple-key", "marks"):
        inner: tuple = ()
        for _ in range(depth - 1):
            inner = (inner,)
        return {inner: 1} if kind == "tuple-key" else inner
    value: object = [] if kind == "lists" else {}
    for _ in range(depth - 1):
        value = [value] if kind == "lists" else {"k": value}
    return value
