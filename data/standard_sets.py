"""What the standard test sets hold (data/standard_sets.json), and a DIR_DATA checked against it.

A set is checked where data/benchmark.py reads it: images missing or extra, sizes, a greyscale
copy of an image in colour in the standard version (or the reverse), LR files missing or of the
wrong size, unpaired rain files, an entry named like an image that is not a regular file (never
opened). Where the table records the SHA-256 of an image's pixels (Set5, CBSD68), a differing
image is a note, not a problem: no checksum is published, the recorded one is of a single copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

import utility

from .benchmark import HR_DIRS, LR_DIRS, SR_SETS, STANDARD_SETS_FILE, first_folder
from .degrade import bicubic_lr
from .images import (
    DECODE_ERRORS,
    ImageReadError,
    list_entries,
    list_images,
    read_image,
    save_image,
    second_images,
    stem,
)

SCALES = (2, 3, 4)  # the LR files made and checked for SR sets
SET_ORDER = ("Set5", "Set14", "B100", "Urban100", "Manga109", "CBSD68", "Rain100L", "DIV2K")
RAIN_SET = "Rain100L"
READ_DIRS = {s: tuple(d for d in HR_DIRS[s] if "train" not in d) for s in SET_ORDER}  # test parts
GREY_MODES = ("1", "L", "LA", "P;L", "I", "I;16", "I;16B", "I;16L", "F")
SHA256_OF_PIXELS = "pixels_sha256"  # the table's key: {image: SHA-256 of pixel_sha256's bytes}
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class PrepareError(Exception):
    """A fatal error, reported as one line naming the file or option."""


@dataclass(frozen=True)
class SetSpec:
    """What a standard set holds, as far as the table records it."""

    name: str
    count: int
    sizes: dict[str, tuple[int, int]] | None = None  # per image
    names: tuple[str, ...] | None = None  # the image names, None where not recorded
    allowed: tuple[tuple[int, int], ...] | None = None  # sizes any image may have
    greyscale: frozenset[str] = frozenset()
    pixels_sha256: dict[str, str] = field(default_factory=dict)


def load_standard_sets(path: str | None = None) -> dict[str, SetSpec]:
    """The SetSpec of each set in ``path`` (data/standard_sets.json by default)."""
    path = path or STANDARD_SETS_FILE
    try:
        raw = json.loads(utility.read_small_file(path))  # a FIFO there is refused, not waited on
        return {name: _spec(name, entry) for name, entry in raw.items() if not name.startswith("_")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"{path}: cannot read the table of standard sets: {e}") from None


def _spec(name: str, entry: dict) -> SetSpec:
    """One set's SetSpec from its JSON entry; ValueError for a stray image name or a bad hash."""
    images = entry.get("images")
    spec = SetSpec(name, int(entry["count"]),
                   {k: (int(v[0]), int(v[1])) for k, v in images.items()} if images else None,
                   tuple(images) if images else tuple(entry["names"]) if "names" in entry else None,
                   tuple((int(w), int(h)) for w, h in entry["sizes"]) if "sizes" in entry else None,
                   frozenset(entry.get("greyscale", ())),
                   {str(k): str(v) for k, v in entry.get(SHA256_OF_PIXELS, {}).items()})
    for key, listed in (("greyscale", spec.greyscale), (SHA256_OF_PIXELS, spec.pixels_sha256)):
        stray = sorted(n for n in listed if spec.names is None or n not in spec.names)
        if stray:
            raise ValueError(f"{name}: {key} names {stray[0]!r}, not one of its images")
    bad = sorted(n for n, h in spec.pixels_sha256.items() if not SHA256_HEX.match(h))
    if bad:
        raise ValueError(f"{name}: {SHA256_OF_PIXELS} of {bad[0]!r} is not 64 hexadecimal digits")
    return spec


def lr_dir(dir_data: str, set_name: str, scale: int) -> str:
    """The folder of a set's LR files at ``scale``."""
    return os.path.join(dir_data, LR_DIRS[set_name][0].format(s=scale))


def lr_name(file_stem: str, scale: int, hr_names: set[str]) -> str:
    """The HR name an LR file belongs to: its stem, less a trailing ``x<scale>``."""
    suffix = f"x{scale}"
    if file_stem in hr_names or not file_stem.lower().endswith(suffix):
        return file_stem
    return file_stem[:-len(suffix)]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header; ImageReadError if it is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path!r}: {e}") from None


def cropped(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size`` cut down to a multiple of ``multiple`` on each side."""
    return size[0] - size[0] % multiple, size[1] - size[1] % multiple


def size_text(sizes: Sequence[tuple[int, int]]) -> str:
    """``481x321 or 321x481``."""
    return " or ".join(f"{w}x{h}" for w, h in sizes)


def pixel_sha256(img: torch.Tensor) -> str:
    """SHA-256 of an image's pixels as read: ``<width>x<height> RGB8`` and a newline, then its
    uint8 R, G, B values pixel by pixel, row by row (a (height, width, 3) array's bytes)."""
    h, w = img.shape[1:]
    digest = hashlib.sha256(f"{w}x{h} RGB8\n".encode("ascii"))
    digest.update(img.permute(1, 2, 0).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SetReport:
    """What --check found of one set: counts, LR state per scale, the problems and notes."""

    name: str
    found: int
    expected: int
    unit: str = "images"
    lr_missing: Counter[int] = field(default_factory=Counter)  # scale -> LR files
    lr_wrong: Counter[int] = field(default_factory=Counter)
    lr_made: int = 0
    problems: list[str] = field(default_factory=list)
    hashed: int = 0  # images found whose standard pixels' SHA-256 is recorded
    hash_matched: int = 0  # ... and whose pixels have it
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems

    def lines(self) -> list[str]:
        """``Set5: 5 of 5 images, LR x2 x3 x4 complete``, then the recorded pixels matched."""
        text = f"{self.name}: {self.found} of {self.expected} {self.unit}"
        if self.name in SR_SETS and self.found:
            bad = {s: ", ".join(f"{n} {what}" for n, what in ((self.lr_missing[s], "missing"),
                                                               (self.lr_wrong[s], "wrong size")) if n)
                   for s in SCALES}
            complete = " ".join(f"x{s}" for s, wrong in bad.items() if not wrong)
            parts = [f"{complete} complete"] if complete else []
            parts += [f"x{s}: {wrong}" for s, wrong in bad.items() if wrong]
            made = f" ({self.lr_made} made)" if self.lr_made else ""
            text += f", LR {', '.join(parts)}{made}"
        if not self.hashed:
            return [text]
        return [text, f"{self.name}: {self.hash_matched} of {self.hashed} images match the standard "
                      "version's pixels"]


def check_image(path: str, spec: SetSpec, problems: list[str],
                name: str | None = None) -> torch.Tensor | None:
    """The image at ``path`` (``name``: None for a rain file), size and colour checked; None if unreadable."""
    try:
        img = read_image(path)
    except ImageReadError as e:
        problems.append(f"{path}: {e}")
        return None
    size = (img.shape[2], img.shape[1])
    if spec.sizes is not None:  # sizes per image; an image not in the table is named elsewhere
        allowed = (spec.sizes[name],) if name in spec.sizes else ()
    else:
        allowed = spec.allowed or ()
    if allowed and size not in allowed:
        crop = next((s for s in SCALES if any(size == cropped(a, s) for a in allowed)), None)
        note = f" (cropped to a multiple of {crop}: use the uncropped image)" if crop else ""
        problems.append(f"{path}: {size_text([size])}, expected {size_text(allowed)}{note}")
    grey = torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # as read_image makes L, LA
    what = f"{spec.name}'s {name}" if name is not None else f"every {spec.name} image"
    if grey and name not in spec.greyscale:
        problems.append(f"{path}: greyscale ({grey_reason(path)}); {what} is in colour in the "
                        "standard version: a wrong version")
    elif not grey and name in spec.greyscale:
        problems.append(f"{path}: in colour; {what} is greyscale in the standard version: a "
                        "re-coloured or re-encoded copy, a wrong version")
    return img


def grey_reason(path: str) -> str:
    """Why an image of three equal channels is greyscale: its mode, if a greyscale one."""
    try:
        with Image.open(path) as raw:
            mode = raw.mode
    except DECODE_ERRORS:
        mode = ""
    return f"mode {mode}" if mode in GREY_MODES else "its three channels are equal"


def check_lr(dir_data: str, set_name: str, name: str, hr: torch.Tensor, hr_path: str,
             report: SetReport, lr_into: str | None) -> None:
    """Check one HR image's LR files at every scale; make the missing ones under ``lr_into`` if given."""
    h, w = hr.shape[1:]
    for s in SCALES:
        folder = lr_dir(dir_data, set_name, s)
        path = os.path.join(folder, f"{name}x{s}.png")
        if not os.path.isfile(path):
            if lr_into:
                save_image(bicubic_lr(hr, s), os.path.join(lr_dir(lr_into, set_name, s),
                                                           os.path.basename(path)))
                report.lr_made += 1
            else:
                report.lr_missing[s] += 1
                if os.path.isdir(folder):
                    report.problems.append(f"{path}: missing (LR x{s} of {hr_path})")
            continue
        try:
            size, wrong = image_size(path), None
            if size != (w // s, h // s):
                wrong = f"{size_text([size])}, expected {size_text([(w // s, h // s)])} (HR {w}x{h} // {s})"
        except ImageReadError as e:
            wrong = str(e)
        if wrong:
            report.problems.append(f"{path}: {wrong}")
            report.lr_wrong[s] += 1


def check_lr_folders(dir_data: str, set_name: str, names: set[str], report: SetReport) -> None:
    """One problem per scale whose LR folder is missing; one per LR file with no HR image."""
    for s in SCALES:
        folder = lr_dir(dir_data, set_name, s)
        if not os.path.isdir(folder):
            if report.lr_missing[s]:
                report.problems.append(f"{folder}: missing ({report.lr_missing[s]} LR x{s} "
                                       "files; --make_lr makes them)")
            continue
        for path in list_images(folder):
            if lr_name(stem(path), s, names) not in names or not stem(path).endswith(f"x{s}"):
                report.problems.append(f"{path}: no HR image for this LR file (expected "
                                       f"<name>x{s}.png for an HR <name>.png)")


def check_images(dir_data: str, folder: str, spec: SetSpec, lr_into: str | None) -> SetReport:
    """Check a folder of HR images (and their LR files for SR sets) against ``spec``."""
    files = list_entries(folder)  # a pipe named like an image is read, so named, not left out
    names = [stem(f) for f in files]
    report = SetReport(spec.name, len(files), spec.count)
    report.problems += second_images(files)
    if spec.names is not None:
        report.found = len(set(names) & set(spec.names))
        report.problems += [f"{os.path.join(folder, n + '.png')}: missing ({spec.name} has "
                            f"{spec.count} images)" for n in spec.names if n not in names]
        report.problems += [f"{f}: not an image of {spec.name}"
                            for f, n in zip(files, names, strict=True) if n not in spec.names]
    elif len(files) != spec.count:
        report.problems.append(f"{folder}: {len(files)} image(s), {spec.name} has {spec.count}")
    for path, name in zip(files, names, strict=True):
        img = check_image(path, spec, report.problems, name)
        if img is None:
            continue
        if name in spec.pixels_sha256:
            report.hashed += 1
            if pixel_sha256(img) == spec.pixels_sha256[name]:
                report.hash_matched += 1
            else:
                report.notes.append(f"{path}: its pixels differ from the standard {spec.name} {name}'s "
                                    "(SHA-256 of the decoded pixels); its metrics may not compare with "
                                    "published ones")
        if spec.name in SR_SETS:
            check_lr(dir_data, spec.name, name, img, path, report, lr_into)
    if spec.name in SR_SETS:
        check_lr_folders(dir_data, spec.name, set(names), report)
    return report


def check_rain(folder: str, spec: SetSpec) -> SetReport:
    """Check a Rain100L folder: pairs, sizes (both the same), colour."""
    rainy, clean = {}, {}
    for path in list_entries(folder):  # a pipe or device named like an image: read, so named
        if m := re.match(r"^(no)?rain-(.+)$", stem(path)):  # the names data/images.rain_pairs reads
            (clean if m.group(1) else rainy)[m.group(2)] = path
    pairs = sorted(set(rainy) & set(clean))
    report = SetReport(spec.name, len(pairs), spec.count, unit="pairs")
    for key in sorted(set(rainy) ^ set(clean)):
        partner = f"norain-{key}" if key in rainy else f"rain-{key}"
        report.problems.append(f"{rainy.get(key) or clean[key]}: unpaired (no {partner} image)")
    if len(pairs) != spec.count:
        report.problems.append(f"{folder}: {len(pairs)} rain-/norain- pairs, {spec.name} has "
                               f"{spec.count}")
    for key in pairs:
        rain, norain = (check_image(p, spec, report.problems) for p in (rainy[key], clean[key]))
        if rain is not None and norain is not None and rain.shape != norain.shape:
            report.problems.append(f"{rainy[key]}: {rain.shape[2]}x{rain.shape[1]}, its pair "
                                   f"{clean[key]} is {norain.shape[2]}x{norain.shape[1]}")
    return report


def check_tree(dir_data: str, specs: dict[str, SetSpec], lr_into: str | None = None) -> list[SetReport]:
    """A SetReport for each set found under ``dir_data``; missing LR files made under ``lr_into``."""
    reports = []
    for set_name in SET_ORDER:
        folder = first_folder(dir_data, READ_DIRS[set_name])
        if folder is None:
            continue
        spec = specs.get(set_name)
        if spec is None:
            raise PrepareError(f"{STANDARD_SETS_FILE}: no entry for {set_name}")
        reports.append(check_rain(folder, spec) if set_name == RAIN_SET
                       else check_images(dir_data, folder, spec, lr_into))
    return reports
