"""Read the files of a folder, tar or zip archive in memory, treating archives as untrusted.

Nothing is extracted. Absolute paths, ``..``, links, devices, absurd sizes and a second file
of one name (tools keep the last, silently) are refused, naming the archive and the member;
a truncated or corrupt archive is a :class:`DatasetError` naming the file, never read in part.
Memory stays bounded whatever an archive declares: no read asks for more than
:data:`MAX_SINGLE_READ` bytes (tarfile would allocate what a pax or long-name header
declares), members are read up to their declared size, bzip2/lzma zip members (whose
decompressors expand without bound) are refused, and at most :data:`DEFAULT_MAX_MEMBERS`
members are listed (tarfile keeps an object per member).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from aavae.data.errors import DatasetError

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024**2
# ImageNet-1k holds 1.3 million files; a tar member costs tarfile about 500 bytes of memory.
DEFAULT_MAX_MEMBERS = 4_000_000
MAX_SINGLE_READ = 64 * 1024**2  # bytes one read may ask of an archive file
READ_CHUNK = 1024**2
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)

# What a damaged archive raises somewhere between opening it and reading its last byte.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,  # zip members with a compression method zipfile lacks
)


@dataclass(frozen=True)
class Entry:
    """One file or folder of a source: a relative POSIX path and its (declared) size."""

    name: str
    size: int
    is_dir: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.name).parts


class Source(ABC):
    """A folder or archive whose files are listed and read without extracting anything."""

    kind = "source"
    _damage_hint = (
        "The archive looks truncated or corrupt: download or create it again "
        "(check its size and checksum)."
    )

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def entries(self) -> list[Entry]:
        """All files and folders, each checked to be safe to read."""

    @abstractmethod
    def files(
        self, wanted: Callable[[Entry], bool] | None = None
    ) -> Iterator[tuple[Entry, BinaryIO]]:
        """``(entry, stream)`` of the wanted files in storage order, each valid until the next."""

    def named_files(self, names: set[str], dataset: str) -> Iterator[tuple[str, Entry, BinaryIO]]:
        """Yield ``(base name, entry, stream)`` for files whose base name is in ``names``,
        refusing a second file of the same name (two copies of a dataset in one source)."""
        seen: dict[str, str] = {}
        for entry, stream in self.files(lambda entry: PurePosixPath(entry.name).name in names):
            name = PurePosixPath(entry.name).name
            if name in seen:
                raise DatasetError(
                    f"{self.describe()} holds '{name}' twice ('{seen[name]}' and '{entry.name}'): "
                    f"keep one copy of the {dataset} files."
                )
            seen[name] = entry.name
            yield name, entry, stream

    def close(self) -> None:  # noqa: B027 - only archives hold something to close
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, member: str | None = None) -> str:
        """How messages name this source, or one member of it."""
        if member is None:
            return f"{self.kind} '{self.path}'"
        return f"'{member}' in {self.kind} '{self.path}'"

    @contextlib.contextmanager
    def _reading(self, member: str | None = None) -> Iterator[None]:
        try:
            yield
        except _READ_ERRORS as exc:
            raise DatasetError(
                f"Could not read {self.describe(member)}: {type(exc).__name__}: {exc}. "
                f"{self._damage_hint}"
            ) from exc


class _GuardedStream(io.RawIOBase):
    """A member's bytes, read errors naming the member; reading it whole stops at its declared
    size (a zip deflate stream longer than its header says costs no more memory)."""

    def __init__(self, raw: BinaryIO, source: Source, member: str, size: int) -> None:
        super().__init__()
        self._raw, self._source, self._member, self._size = raw, source, member, size

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with self._source._reading(self._member):
            return self._raw.readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        with self._source._reading(self._member):
            return self._raw.read(size)

    def readall(self) -> bytes:
        chunks, left = [], self._size
        with self._source._reading(self._member):
            while left > 0 and (chunk := self._raw.read(min(READ_CHUNK, left))):
                chunks.append(chunk)
                left -= len(chunk)
        return b"".join(chunks)


class DirectorySource(Source):
    """A folder on the local disk (the user's own, trusted like any local file)."""

    kind = "folder"
    _damage_hint = "Check that the file exists and is readable."
    _listing: list[Entry] | None = None

    def describe(self, member: str | None = None) -> str:
        if member is None:
            return super().describe()
        return f"'{self.path / member}'"

    def entries(self) -> list[Entry]:
        if self._listing is None:
            self._listing = self._walk()
        return self._listing

    def _walk(self) -> list[Entry]:
        found = []
        with self._reading():
            for folder, subfolders, filenames in os.walk(self.path):
                subfolders.sort()
                here = Path(folder)
                relative = here.relative_to(self.path).as_posix()
                prefix = "" if relative == "." else f"{relative}/"
                found.extend(Entry(f"{prefix}{name}", 0, is_dir=True) for name in subfolders)
                found.extend(
                    Entry(f"{prefix}{name}", (here / name).stat().st_size)
                    for name in sorted(filenames)
                )
        return found

    def files(
        self, wanted: Callable[[Entry], bool] | None = None
    ) -> Iterator[tuple[Entry, BinaryIO]]:
        for entry in self.entries():
            if entry.is_dir or (wanted is not None and not wanted(entry)):
                continue
            with self._reading(entry.name):
                stream = open(self.path / entry.name, "rb")  # noqa: SIM115 - closed below
            with stream:
                yield entry, _GuardedStream(stream, self, entry.name, entry.size)  # type: ignore[misc]


class TarSource(Source):
    """A tar archive, plain or gzip, bz2 or xz, read member by member. The decompressor is
    opened here, not by tarfile, so every read tarfile makes passes :class:`_BoundedReads`."""

    kind = "archive"

    def __init__(self, path: Path, max_member_bytes: int) -> None:
        super().__init__(path)
        self._max_member_bytes = max_member_bytes
        self._end_checked = False
        with self._reading():
            self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            with self._reading():
                self._stream = _decompressed(self._file)
                self._reads = _BoundedReads(self._stream, self)
                self._tar = tarfile.open(fileobj=self._reads, mode="r:")
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._tar.close()
        self._stream.close()
        self._file.close()

    def entries(self) -> list[Entry]:
        members = []
        with self._reading():
            for member in self._tar:  # lazily, so a flood of members is refused early
                members.append(member)
                check_member_count(len(members), self)
            self._check_end()
        entries = [entry for entry in map(self._checked, members) if entry is not None]
        refuse_repeated_names(entries, self)
        return entries

    def _check_end(self) -> None:
        """tarfile ends the listing quietly at a damaged header or at the end of the data;
        only a block of zeros (the end-of-archive marker) is a whole archive's end."""
        last, self._end_checked = self._reads.last, True
        if last is None or (len(last) == tarfile.BLOCKSIZE and not any(last)):
            self._check_trailer()
            return
        if len(last) < tarfile.BLOCKSIZE:
            problem = "it ends without the end-of-archive marker: it is truncated"
        else:
            problem = f"the header at byte {self._tar.offset:,} is damaged"
        raise DatasetError(
            f"Could not read {self.describe()}: {problem}, and the members after that point "
            f"cannot be listed. {self._damage_hint}"
        )

    def _check_trailer(self) -> None:
        """Decompress the padding after the end marker: a gzip, bzip2 or xz stream checks its
        CRC at its own end, and a flipped bit in a member's data is otherwise never noticed."""
        left = MAX_SINGLE_READ
        while self._stream is not self._file and (chunk := self._stream.read(READ_CHUNK)):
            left -= len(chunk)
            if left < 0:
                raise DatasetError(
                    f"Refusing {self.describe()}: more than {MAX_SINGLE_READ:,} bytes follow the end "
                    "of its tar data. The archive is damaged or not what it claims to be."
                )

    def files(
        self, wanted: Callable[[Entry], bool] | None = None
    ) -> Iterator[tuple[Entry, BinaryIO]]:
        # Headers are read lazily (or reused from entries()): decompressed front to back once.
        seen: set[str] = set()
        with self._reading():
            for count, member in enumerate(self._tar, 1):
                check_member_count(count, self)
                entry = self._checked(member)
                if entry is not None:
                    refuse_repeated_names([entry], self, seen)
                if entry is None or entry.is_dir or (wanted is not None and not wanted(entry)):
                    continue
                stream = self._tar.extractfile(member)
                assert stream is not None  # a regular file, checked above
                yield entry, _GuardedStream(stream, self, entry.name, entry.size)  # type: ignore[misc]
            if not self._end_checked:  # listed just now: the last read was the final header
                self._check_end()

    def _checked(self, member: tarfile.TarInfo) -> Entry | None:
        name = safe_member_name(member.name, self)
        if member.issym() or member.islnk():
            raise DatasetError(
                f"Refusing {self.describe(member.name)}: it is a link (to '{member.linkname}'). "
                "Archives must hold plain files: re-create it without links (e.g. tar --dereference)."
            )
        if not (member.isfile() or member.isdir()):
            raise DatasetError(
                f"Refusing {self.describe(member.name)}: it is a device, pipe or other special "
                "file. Archives must hold plain files and folders only."
            )
        check_member_size(member.size, member.name, self, self._max_member_bytes)
        if not name:  # the archive's own root, "./"
            return None
        return Entry(name, member.size, is_dir=member.isdir())


class ZipSource(Source):
    """A zip archive, read member by member."""

    kind = "archive"

    def __init__(self, path: Path, max_member_bytes: int) -> None:
        super().__init__(path)
        self._max_member_bytes = max_member_bytes
        with self._reading():
            self._zip = zipfile.ZipFile(path)
        try:
            check_member_count(len(self._zip.infolist()), self)
            refuse_repeated_names(self.entries(), self)
        except DatasetError:
            self._zip.close()
            raise

    def close(self) -> None:
        self._zip.close()

    def entries(self) -> list[Entry]:
        return [entry for entry in map(self._checked, self._zip.infolist()) if entry is not None]

    def files(
        self, wanted: Callable[[Entry], bool] | None = None
    ) -> Iterator[tuple[Entry, BinaryIO]]:
        for info in self._zip.infolist():
            entry = self._checked(info)
            if entry is None or entry.is_dir or (wanted is not None and not wanted(entry)):
                continue
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise DatasetError(
                    f"Refusing {self.describe(info.filename)}: it is compressed with method "
                    f"{info.compress_type} (bzip2 is 12, lzma 14), whose output this reader "
                    "cannot bound while reading. Re-create the archive with the usual deflate "
                    "compression (e.g. `zip -r`), or use a .tar.bz2/.tar.xz archive."
                )
            with self._reading(info.filename):
                stream = self._zip.open(info)
            with stream:
                yield entry, _GuardedStream(stream, self, entry.name, entry.size)  # type: ignore[misc]

    def _checked(self, info: zipfile.ZipInfo) -> Entry | None:
        name = safe_member_name(info.filename, self)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(
                f"Refusing {self.describe(info.filename)}: it is a symbolic link. Archives must "
                "hold plain files: re-create it without links."
            )
        if info.flag_bits & 0x1:
            raise DatasetError(
                f"Cannot read {self.describe(info.filename)}: it is encrypted. Re-create the "
                "archive without a password."
            )
        check_member_size(info.file_size, info.filename, self, self._max_member_bytes)
        if not name:
            return None
        return Entry(name, info.file_size, is_dir=info.is_dir())


class _BoundedReads:
    """The file object tarfile reads from: a read of more than MAX_SINGLE_READ is refused
    (tarfile reads a pax or long-name header's declared size, maybe terabytes, in one call)."""

    def __init__(self, raw: BinaryIO, source: Source) -> None:
        self._raw, self._source = raw, source
        self.last: bytes | None = None  # what the latest read returned

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_SINGLE_READ:
            declared = "the rest of the file" if size is None or size < 0 else f"{size:,} bytes"
            raise DatasetError(
                f"Refusing {self._source.describe()}: a header declares {declared}, more than "
                f"the {MAX_SINGLE_READ:,} bytes one header or read may have. The archive is "
                "damaged or not what it claims to be: check where it came from."
            )
        self.last = self._raw.read(size)
        return self.last

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._raw.seek(offset, whence)
        except (ValueError, OverflowError) as exc:  # past 2**63: a size no file can have
            raise DatasetError(
                f"Refusing {self._source.describe()}: a header declares a size that puts the "
                f"next member at byte {offset:,}, beyond any file. The archive is damaged or "
                "not what it claims to be: check where it came from."
            ) from exc

    def tell(self) -> int:
        return self._raw.tell()


def _decompressed(file: BinaryIO) -> BinaryIO:
    """The tar stream inside a plain, gzip, bzip2 or xz file, chosen by its magic bytes."""
    magic = file.read(6)
    file.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=file, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(file)  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(file)  # type: ignore[return-value]
    return file


def safe_member_name(raw_name: str, source: Source) -> str:
    """The member's path as a clean relative POSIX path; refuse absolute paths and ``..``."""
    name = raw_name.replace("\\", "/")  # some Windows zip tools write backslashes
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(
            f"Refusing {source.describe(raw_name)}: it has an absolute path. Archive members "
            "must be relative paths: re-create the archive from inside its folder."
        )
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise DatasetError(
            f"Refusing {source.describe(raw_name)}: its path contains '..' and would point "
            "outside the archive. Re-create the archive from inside its folder."
        )
    return "/".join(parts)


def check_member_count(count: int, source: Source) -> None:
    if count > DEFAULT_MAX_MEMBERS:
        raise DatasetError(
            f"Refusing {source.describe()}: it holds more than {DEFAULT_MAX_MEMBERS:,} members, "
            "more than this reader holds in memory for one dataset. Split the dataset, or check "
            "that the archive is what it claims to be."
        )


def refuse_repeated_names(entries: list[Entry], source: Source, seen: set[str] | None = None) -> None:
    """Refuse a second file of a name in ``seen`` (the names met so far, which it adds to)."""
    seen = set() if seen is None else seen
    for entry in entries:
        if entry.name in seen:
            raise DatasetError(
                f"Refusing {source.describe(entry.name)}: the archive holds two files of this name, "
                "and only one of them could be read. Re-create the archive with each file once."
            )
        if not entry.is_dir:
            seen.add(entry.name)


def check_member_size(size: int, name: str, source: Source, limit: int) -> None:
    if size > limit:
        raise DatasetError(
            f"Refusing {source.describe(name)}: it declares {size:,} bytes, more than the "
            f"{limit:,} bytes a file of this dataset can have. The archive is not what it "
            "claims to be: check where it came from."
        )


def is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def open_source(
    path: str | os.PathLike, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Source:
    """A folder, tar (gz/bz2/xz) or zip archive, the kind by its name, else by its content."""
    path = Path(path)
    if path.is_dir():
        return DirectorySource(path)
    if not path.is_file():
        raise DatasetError(
            f"'{path}' does not exist (or is not a file or folder): check dataset.path."
        )
    lowered = path.name.lower()
    if lowered.endswith(ZIP_SUFFIXES):
        return ZipSource(path, max_member_bytes)
    if lowered.endswith(TAR_SUFFIXES):
        return TarSource(path, max_member_bytes)
    if zipfile.is_zipfile(path):
        return ZipSource(path, max_member_bytes)
    with contextlib.suppress(DatasetError):  # tarfile.is_tarfile would bypass the read bound
        return TarSource(path, max_member_bytes)
    raise DatasetError(
        f"'{path}' is neither a folder nor a readable archive: expected a folder, a .tar, "
        ".tar.gz/.tgz, .tar.bz2, .tar.xz or .zip file. If it is one of these, it is damaged: "
        "download or create it again."
    )


def read_exactly(stream: BinaryIO, buffer: memoryview, what: str) -> None:
    """Fill ``buffer`` from ``stream`` (which may return short reads); refuse one cut short."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])  # type: ignore[attr-defined]
        if not count:
            raise DatasetError(
                f"{what} ended after {filled:,} of {len(buffer):,} expected bytes: the file is "
                "truncated. Download or create it again."
            )
        filled += count


def file_digests(
    path: str | os.PathLike, algorithms: tuple[str, ...] = ("sha256",)
) -> dict[str, str]:
    """Hex digests of a file for several algorithms, in one pass over it."""
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    with open(path, "rb") as stream:
        while chunk := stream.read(4 * 1024**2):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}
