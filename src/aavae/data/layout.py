"""The layout of an image folder or archive, ``<split>/<class>/<image>``, from its listing:
class names and each split's files and labels, or a refusal of a layout that cannot be trained
or evaluated on (no ``train``, an empty class, classes differing between splits)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aavae.data.archive import Entry, Source
from aavae.data.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EXPECTED_LAYOUT = (
    "<split>/<class>/<image> with a 'train' split and a 'test' (or 'val') split of held-out "
    "images for evaluation, e.g. train/cat/0001.jpg and test/cat/0002.png, as a folder, .tar, "
    ".tar.gz/.tgz or .zip file, optionally inside one top-level folder"
)


@dataclass(frozen=True)
class FolderLayout:
    """What a listing holds: class names and, per split, its image files with their labels."""

    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]  # split -> [(entry name, label)], sorted by name


def plan_layout(entries: Iterable[Entry], source: Source) -> FolderLayout:
    """Find splits and classes in a listing and check them; nothing is read or decoded."""
    visible = [entry for entry in entries if not is_ignored(entry.name)]
    root = _single_top_folder(visible)
    classes: dict[str, set[str]] = {}  # split -> class folders (empty or not)
    images: dict[str, dict[str, list[str]]] = {}  # split -> class -> entry names
    ignored: list[str] = []
    for entry in visible:
        parts = entry.parts[len(root) :]
        if not parts:
            continue
        if not entry.is_dir and not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            ignored.append(entry.name)
            continue
        split_classes = classes.setdefault(parts[0], set())
        if entry.is_dir:
            if len(parts) >= 2:
                split_classes.add(parts[1])
            continue
        if len(parts) < 3:
            raise DatasetError(
                f"Image {source.describe(entry.name)} is not inside a class folder. "
                f"Expected {EXPECTED_LAYOUT}."
            )
        split_classes.add(parts[1])
        images.setdefault(parts[0], {}).setdefault(parts[1], []).append(entry.name)
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        logger.warning(
            "Ignored %d files of %s that are not images (%s): %s",
            len(ignored),
            source.describe(),
            ", ".join(IMAGE_EXTENSIONS),
            shown,
        )
    prefix = "".join(f"{folder}/" for folder in root)
    _check_classes(classes, images, source, prefix)
    class_names = tuple(sorted(classes["train"]))
    label_of = {name: label for label, name in enumerate(class_names)}
    splits = {
        split: sorted(
            (name, label_of[cls]) for cls, names in images[split].items() for name in names
        )
        for split in _split_order(classes)
    }
    return FolderLayout(class_names, splits)


def _split_order(splits: Iterable[str]) -> list[str]:
    """``train`` first, then the other splits by name."""
    return ["train", *sorted(set(splits) - {"train"})]


def is_ignored(name: str) -> bool:
    """In a hidden file or folder or ``__MACOSX``, which ingest and embed pass over."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _single_top_folder(entries: list[Entry]) -> tuple[str, ...]:
    """``(folder,)`` when everything lies in one top-level folder that holds the splits."""
    tops = {entry.parts[0] for entry in entries if entry.is_dir or len(entry.parts) > 1}
    if len(tops) == 1 and "train" not in tops:
        (top,) = tops
        if any(entry.parts[1:2] == ("train",) for entry in entries):
            return (top,)
    return ()


def _check_classes(
    classes: dict[str, set[str]],
    images: dict[str, dict[str, list[str]]],
    source: Source,
    prefix: str,
) -> None:
    if "train" not in classes:
        found = ", ".join(f"'{prefix}{split}'" for split in sorted(classes)) or "no folders"
        raise DatasetError(
            f"{source.describe()} has no 'train' split: found {found}. Expected {EXPECTED_LAYOUT}."
        )
    reference = classes["train"]
    for split in _split_order(classes):
        for name in sorted(reference - classes[split]):
            raise DatasetError(
                f"Class '{name}' is in split 'train' but missing from split '{split}' of "
                f"{source.describe()}: every split needs the same class folders."
            )
        for name in sorted(classes[split] - reference):
            raise DatasetError(
                f"Class '{name}' of split '{split}' is missing from split 'train' of "
                f"{source.describe()}: every split needs the same class folders."
            )
        for name in sorted(classes[split]):
            if not images.get(split, {}).get(name):
                raise DatasetError(
                    f"Class folder '{prefix}{split}/{name}' of {source.describe()} holds no images "
                    f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder."
                )
