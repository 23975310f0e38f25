"""The one way this project reads a torch file: tensors and plain containers only, within bounds.

Every bundle, checkpoint and registered model is read with ``weights_only=True`` onto the CPU.
That still builds whatever a downloaded file asks for, so the file is checked first, before
anything is allocated: zip records stored as torch.save stores them (a deflated 1 MB record
inflated to a 1 GiB tensor); the pickle's opcodes walked, nothing built: nesting at most
:data:`MAX_NESTING` (a tuple nested 10^6 deep crashed torch's hashing), storages within the
file's size and :data:`MAX_TENSOR_BYTES` (a legacy file's are allocated at their claimed size),
each tensor inside its storage, and only what torch.save writes named or called (not
``bytearray(2**30)``, which weights-only loading allows). Classes a read allows beyond those
(:mod:`aavae.models.checkpoint_reading`) are checked here too: torch's allow-list is global.
"""

from __future__ import annotations

import _compat_pickle
import io
import mmap
import os
import pickle
import pickletools
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

MAX_NESTING = 100  # containers inside containers; a checkpoint nests about 10
MAX_TENSOR_BYTES = 16 * 1024**3  # the stated ceiling on the tensors of one file
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
LEGACY_PICKLES = 5  # magic number, protocol, system info, the content, the storage keys

#: What torch.save's pickles call while a file is rebuilt; a call of anything else is refused.
TENSOR_REBUILDS = frozenset({"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2"})
CALLS = TENSOR_REBUILDS | {
    "torch._tensor._rebuild_from_type_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "collections.OrderedDict", "collections.Counter",
    "builtins.set", "builtins.complex", "builtins.bytearray", "_codecs.encode", "torch.Size",
    "torch.device", "torch.serialization._get_layout",
}
#: Storage types by name, with the bytes of one element; with torch's dtypes and tensor types,
#: the names a file may hold without calling them.
STORAGE_ITEMSIZE = {f"torch.{name}": getattr(getattr(torch, name), "_dtype", torch.uint8).itemsize
                    for name in dir(torch) if name.endswith("Storage") and name not in ("Storage", "TypedStorage")}
VALUES = frozenset({"torch.Tensor", "torch.nn.parameter.Parameter", *STORAGE_ITEMSIZE}) | {
    f"torch.{name}" for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_UNKNOWN = object()  # the value of a container that is no tuple of plain values


class WeightsError(ValueError):
    """A torch file refused or unreadable, named in one line; ``refused``: the name it asked for."""

    def __init__(self, message: str, refused: str | None = None) -> None:
        super().__init__(message)
        self.refused = refused


def load_weights(path: str | os.PathLike, *, mmap: bool = False, allowed: Mapping[str, Any] | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU, once the file is checked (see the
    module docstring); ``mmap`` maps tensors from the file instead of reading them (a checkpoint
    whose step counter alone is wanted). ``allowed`` maps module.name to the object a file's
    reference to it becomes, for this read only. Raises :class:`WeightsError`."""
    path, allowed = Path(path), dict(allowed or {})
    check_weights_file(path, allowed)
    try:
        with torch.serialization.safe_globals([(value, name) for name, value in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise WeightsError(f"{path} is damaged or not a file torch.save wrote: torch could not "
                           f"unpickle it ({_reason(error)})") from error
    except Exception as error:  # truncated, or a zip that torch.save did not write
        raise WeightsError(f"{path} is damaged (truncated?) or a zip file torch.save did not write: "
                           f"torch.load failed with {_reason(error)}. Copy or download it again") from error


def check_weights_file(path: Path, allowed: Mapping[str, Any]) -> None:
    """Refuse, naming the file, what it asks for beyond the bounds of the module docstring."""
    size, scan = path.stat().st_size, _Scan(path, allowed)
    with path.open("rb") as handle:
        head = handle.read(tarfile.BLOCKSIZE)
        if not head:
            raise WeightsError(f"{path} is empty, not a file torch.save wrote: copy or download "
                               "it again")
        if head.startswith(ZIP_MAGIC):
            scan.pickle(io.BytesIO(_zip_pickle(path, size)))  # a read never returns more than is left
        elif _is_tar(head):  # torch's format before 0.4: tarfile would allocate what headers declare
            _refuse(path, "is a tar archive (torch before 0.4), which weights-only loading cannot read")
        else:  # before torch 1.6: pickles, then the storages' bytes
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # reads stop at its end
                for _ in range(LEGACY_PICKLES):
                    scan.pickle(mapped)
    claimed = sum(scan.storages.values())
    if claimed > min(size, MAX_TENSOR_BYTES):
        bound = f"the file's {size:,} bytes" if size < MAX_TENSOR_BYTES else f"the {MAX_TENSOR_BYTES:,} bytes this reader loads"
        _refuse(path, f"claims {claimed:,} bytes of tensors, more than {bound}")


def _zip_pickle(path: Path, size: int) -> bytes:
    """The zip's data.pkl, once every record is checked to be stored as torch.save stores it."""
    try:
        with zipfile.ZipFile(path) as archive:
            records, seen = archive.infolist(), set()
            for record in records:
                if record.compress_type != zipfile.ZIP_STORED or record.compress_size != record.file_size \
                        or record.header_offset + record.compress_size > size or record.filename in seen:
                    _refuse(path, f"holds the record {record.filename} compressed, repeated or past its end "
                                  "(torch.save stores each record once, as it is)")
                seen.add(record.filename)
            return archive.read(f"{records[0].filename.split('/')[0]}/data.pkl")
    except (zipfile.BadZipFile, KeyError, IndexError, OSError) as error:
        raise WeightsError(f"{path} is damaged (truncated?) or a zip file torch.save did not write "
                           f"({_reason(error)}). Copy or download it again") from error


def _is_tar(head: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


@dataclass(eq=False)
class _Container:
    """What an opcode built: how deep it nests, whether it is nested, a tuple's plain values."""

    depth: int = 1
    nested: bool = False
    value: Any = _UNKNOWN
    made_by: str | None = None  # the name called to build it


class _Global(str):
    """A module.name the pickle refers to."""


class _Storage(int):
    """A storage the pickle refers to, as its element count."""


class _Scan:
    """One walk over a file's pickles: what it names, calls and nests, and its storages' bytes."""

    def __init__(self, path: Path, allowed: Mapping[str, Any]) -> None:
        self.path, self.allowed = path, allowed
        self.storages: dict[str, int] = {}

    def pickle(self, stream: Any) -> None:
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[Any, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                self._step(opcode, arg, stack, marks, memo)
        except WeightsError:
            raise
        except (ValueError, IndexError, KeyError) as error:  # not a pickle: bad opcodes, a short stack
            raise WeightsError(f"{self.path} is damaged or not a file torch.save wrote: its pickle "
                               f"cannot be read ({_reason(error)})") from error

    def _step(self, opcode: pickletools.OpcodeInfo, arg: Any, stack: list, marks: list, memo: dict) -> None:
        name, before = opcode.name, opcode.stack_before
        if name == "MARK":
            marks.append(len(stack))
            if len(marks) > MAX_NESTING:
                self._too_deep()
            return
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            return
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
            return
        if pickletools.markobject in before:
            at = marks.pop()
            items, stack[at:] = stack[at:], []
            below = [stack.pop() for _ in range(before.index(pickletools.markobject))][::-1]
        else:
            items, below = [], [stack.pop() for _ in before][::-1]
        inputs = below + items
        if not opcode.stack_after:
            return  # PROTO, FRAME, POP, POP_MARK, STOP
        if name == "DUP":
            stack.extend(inputs * 2)
        elif name in MUTATORS:
            target, added = inputs[0], inputs[1:]
            if not isinstance(target, _Container) or target.nested or any(item is target for item in added):
                _refuse(self.path, "fills a container after nesting it, or into itself (torch.save never does)")
            if name == "BUILD" and target.made_by not in self.allowed and target.made_by != "collections.OrderedDict":
                _refuse(self.path, f"sets the state of {target.made_by or 'a container'}, which torch.save never does")
            target.depth = max(target.depth, 1 + _depth(added))
            _nest(added)
            stack.append(target)
        elif not before:
            stack.append(self._atom(name, arg))
        else:
            stack.append(self._built(name, arg, inputs))
        if _depth(stack[-1:]) > MAX_NESTING:
            self._too_deep()

    def _atom(self, name: str, arg: Any) -> Any:
        if name == "GLOBAL":
            return self._named(*arg.split(" ", 1))
        if name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            return _Container(value=() if name == "EMPTY_TUPLE" else _UNKNOWN)
        return {"NEWTRUE": True, "NEWFALSE": False}.get(name, arg)

    def _built(self, name: str, arg: Any, inputs: list) -> Any:
        if name == "STACK_GLOBAL" and all(isinstance(item, str) for item in inputs):
            return self._named(*inputs)
        if name == "BINPERSID":
            return self._storage(_value(inputs[0]))
        built = _Container(1 + _depth(inputs))
        if name in ("REDUCE", "NEWOBJ"):  # the calls torch's unpickler makes (it has no INST, OBJ)
            callee, arguments = inputs[0], _value(inputs[1])
            self._check_call(callee, arguments if isinstance(arguments, tuple) else (), name == "REDUCE")
            built.made_by = callee
        if name.startswith("TUPLE"):
            built.value = tuple(map(_value, inputs))
        _nest(inputs)
        return built

    def _named(self, module: str, name: str) -> _Global:
        # as unpickling reads protocol 2, which torch.save writes: Python 2's __builtin__.set is builtins.set
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        name = f"{module}.{name}"
        if name not in CALLS and name not in VALUES and name not in self.allowed:
            raise WeightsError(
                f"{self.path} refers to {name}, which is not among the classes this reader builds "
                "(tensors, plain containers and the classes a Lightning or paper checkpoint holds): "
                "it was not loaded, and nothing in the file was run", refused=name)
        return _Global(name)

    def _check_call(self, callee: Any, arguments: tuple, reduce: bool) -> None:
        name = callee if isinstance(callee, _Global) else "an object that is no named function"
        if name not in self.allowed and not (reduce and name in CALLS):
            _refuse(self.path, f"calls {name} while it is read, which torch.save never writes")
        if name == "torch._tensor._rebuild_from_type_v2" and len(arguments) >= 3:
            function, _, inner = arguments[:3]
            if not (isinstance(function, _Global) and function in TENSOR_REBUILDS):
                _refuse(self.path, f"rebuilds a tensor with {function}")
            self._check_call(function, inner if isinstance(inner, tuple) else (), reduce=True)
        elif name in TENSOR_REBUILDS:
            self._check_tensor(arguments)
        elif name == "builtins.bytearray" and any(isinstance(item, int) for item in arguments):
            _refuse(self.path, "asks for an empty bytearray of a size (torch.save writes bytes)")

    def _check_tensor(self, arguments: tuple) -> None:
        """A tensor's elements must lie inside its storage: past it, a legacy storage grows."""
        storage, offset, size, stride = (arguments + (None,) * 4)[:4]
        whole = (isinstance(storage, _Storage) and isinstance(offset, int) and offset >= 0
                 and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                 and all(isinstance(n, int) and n >= 0 for n in size + stride))
        if not whole:
            _refuse(self.path, "holds a tensor whose storage, offset, size or stride is not as torch.save writes them")
        reach = 0 if 0 in size else offset + 1 + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
        if reach > storage:
            _refuse(self.path, f"holds a tensor reaching element {reach:,} of a storage of {storage:,}")

    def _storage(self, reference: Any) -> _Storage:
        kind = reference[1] if isinstance(reference, tuple) and len(reference) >= 5 else None
        if kind not in STORAGE_ITEMSIZE or reference[0] != "storage" or not isinstance(reference[2], str) \
                or not isinstance(reference[4], int) or reference[4] < 0:
            _refuse(self.path, "refers to its tensors' data in a way torch.save never writes")
        key, numel = reference[2], reference[4]
        self.storages[key] = max(self.storages.get(key, 0), numel * STORAGE_ITEMSIZE[kind])
        return _Storage(numel)

    def _too_deep(self) -> NoReturn:
        _refuse(self.path, f"nests containers more than {MAX_NESTING} deep (a checkpoint nests about 10)")


def _depth(items: list) -> int:
    return max((item.depth for item in items if isinstance(item, _Container)), default=0)


def _nest(items: list) -> None:
    for item in items:
        if isinstance(item, _Container):
            item.nested = True


def _value(item: Any) -> Any:
    return item.value if isinstance(item, _Container) else item


def _refuse(path: Path, what: str) -> NoReturn:
    raise WeightsError(f"{path} {what}: it was not loaded, and nothing in it was run. Copy or "
                       "download it again from where it came from, or give another file")


def _reason(error: BaseException) -> str:
    """What went wrong, in a line: without torch's advice to reload with weights_only=False."""
    paragraphs = [part.strip() for part in str(error).split("\n\n") if part.strip()]
    kept = [part for part in paragraphs if "weights_only" not in part and "Weights only load failed" not in part]
    return (kept or [type(error).__name__])[0].splitlines()[0]
