"""Official dataset archives (CIFAR-10, STL-10): finding the archive or its extracted folder,
the md5 check, and torchvision's downloader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aavae.data.archive import file_digests, is_archive_name
from aavae.data.errors import DatasetError


@dataclass(frozen=True)
class OfficialArchive:
    """Where and how an official dataset archive is published."""

    dataset: str  # e.g. "CIFAR-10 (python version)"
    archive_name: str  # e.g. "cifar-10-python.tar.gz"
    folder_name: str  # the folder the archive extracts to, e.g. "cifar-10-batches-py"
    marker_files: tuple[str, ...]  # files whose presence identifies the extracted folder
    url: str
    md5: str

    def image_folder_hint(self) -> str:
        """What to do when the path holds image files instead (a JPEG copy of the dataset)."""
        return (f"If it holds image files (<split>/<class>/<image>, e.g. a JPEG copy of "
                f"{self.dataset.split(' (')[0]}), read it with --env imagefolder --params "
                f"dataset.path=<it> instead"
                + (" (or --env cifar10_short: a short run of 500 pretraining steps)." if self.dataset.startswith("CIFAR-10")
                   else "."))

    def accepted_layouts(self) -> str:
        return (
            f"the archive '{self.archive_name}', its extracted folder '{self.folder_name}/' "
            f"(holding {', '.join(self.marker_files)}), or a folder containing either"
        )


def locate_official(path: str | os.PathLike, archive: OfficialArchive, download: bool) -> Path:
    """The official archive or its extracted folder: ``path`` itself or in the folder
    ``path``; with ``download``, and no local copy, downloaded (md5 checked) there."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if any((path / marker).is_file() for marker in archive.marker_files):
            return path
        if (path / archive.folder_name).is_dir():
            return path / archive.folder_name
        if (path / archive.archive_name).is_file():
            return path / archive.archive_name
    if download:
        destination = path if is_archive_name(path) else path / archive.archive_name
        download_archive(archive, destination)
        return destination
    if path.is_dir():
        raise DatasetError(
            f"Folder '{path}' does not hold {archive.dataset} in a known layout. Accepted: "
            f"{archive.accepted_layouts()}. Point dataset.path to one of these, or add "
            f"--params dataset.download=true to fetch {archive.url} into it. "
            f"{archive.image_folder_hint()}"
        )
    raise DatasetError(
        f"{archive.dataset} path '{path}' does not exist. Accepted: "
        f"{archive.accepted_layouts()}. Fix dataset.path, or add --params dataset.download=true "
        f"to fetch {archive.url} there."
    )


def archive_sha256(path: Path, archive: OfficialArchive) -> str | None:
    """The sha256 of an archive file (``None`` for a folder), checking the md5 of a file named
    like the official archive (a re-packed one under another name is read as it is)."""
    if path.is_dir():
        return None
    check_md5 = path.name == archive.archive_name
    digests = file_digests(path, ("sha256", "md5") if check_md5 else ("sha256",))
    if check_md5 and digests["md5"] != archive.md5:
        raise DatasetError(
            f"'{path}' has md5 {digests['md5']}, expected {archive.md5} for the official "
            f"{archive.dataset} archive. The file is incomplete or not the official one: delete "
            f"it and download it again (--params dataset.download=true, or from {archive.url}). "
            f"To read a re-packed archive as it is, give it another name than "
            f"'{archive.archive_name}': only a file of that name has its md5 checked."
        )
    return digests["sha256"]


def download_archive(archive: OfficialArchive, destination: Path) -> None:
    from torchvision.datasets.utils import download_url  # heavy import, only when needed

    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url(archive.url, str(destination.parent), destination.name, archive.md5)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; md5 mismatch a RuntimeError
        raise DatasetError(
            f"Could not download {archive.dataset} from {archive.url} to '{destination}': {exc}. "
            "Check the network connection, or download the file by hand and pass its path "
            "with --params dataset.path=<file>."
        ) from exc
    if not destination.is_file():
        raise DatasetError(
            f"Downloading {archive.url} did not produce '{destination}'. Download the file by "
            "hand and pass its path with --params dataset.path=<file>."
        )
