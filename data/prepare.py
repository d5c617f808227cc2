"""Test sets as downloaded (folders or archives) written in data/benchmark.py's layout.

A source is named after a set or one of its aliases (``Set5``, ``cset14``, ``Urban100_SR``,
``DIV2K_valid_HR.zip``), or holds such folders (EDSR's ``benchmark``). Inside it, HR images are
taken from ``HR/`` (``original/``, ``GT/``, ``*_HR/``), a flat folder, BasicSR's ``GTmod<n>/`` or
SelfExSR's ``<name>_SRF_<s>_HR`` (the largest scale's), in that order of preference; LR files from
``LR_bicubic/X<s>/`` or ``LRbicx<s>/``, as ``<name>x<s>`` or ``<name>``, or SelfExSR's ``_LR``;
Rain100L pairs as ``rain-<id>``/``norain-<id>`` or ``rainy/``+``norain/`` (``input/``+``target/``).
``*train*`` folders, hidden ones and SelfExSR's method outputs are skipped.

Refused in one line: one set given under two of its names (``CSet14`` and ``Set14``: versions
whose same-named images would replace each other), two files that would be one, a source or
image that is not a regular file or folder (a pipe, a device: never opened), an image over
MAX_MEMBER_BYTES or that does not decode, the archives of data/archives.py.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from PIL import Image

import runfolder
import stops
import utility

from . import archives, downloads
from .archives import BAD_NAME_CHARS, ArchiveError, archive_stem, extract
from .benchmark import HR_DIRS, LR_DIRS, SR_SETS, set_aliases, set_names
from .images import DECODE_ERRORS, IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, save_image, stem
from .standard_sets import (
    RAIN_SET,
    SCALES,
    SET_ORDER,
    PrepareError,
    SetSpec,
    check_tree,
    cropped,
    image_size,
    lr_name,
)

# Source layouts; HR files ranked in the module docstring's order of preference (lower: surer)
HR_DIR = re.compile(r"^(hr|original|gt|groundtruth|.*_hr)$", re.I)
GTMOD_DIR = re.compile(r"^gtmod\d+$", re.I)
RANK_HR_DIR, RANK_SET_DIR, RANK_GTMOD, RANK_SELFEXSR = 0, 1, 2, 3
SELFEXSR_NAME = re.compile(r"^(?P<name>.+)_SRF_(?P<scale>\d+)_(?P<kind>.+)$")
SELFEXSR_NUMBERED = re.compile(r"^img_\d+$")
LR_SCALE_DIR = re.compile(r"^x(\d+)$", re.I)  # X2 under a folder whose name holds "lr"
LR_NAMED_DIR = re.compile(r"lr.*x(\d+)$", re.I)  # LRbicx2, DIV2K_valid_LR_bicubic_X2
TRAIN_DIR = re.compile(r"train", re.I)
SKIPPED_DIRS = ("__MACOSX",)
RAIN_NAME = re.compile(r"^(no)?rain[-_](.+)$", re.I)  # not rainregion-*/rainstreak-* (JORDER)
RAINY_DIRS = ("rain", "rainy", "input")
CLEAN_DIRS = ("norain", "target", "gt", "clean", "groundtruth")
SEARCH_DEPTH = 3  # folders searched for set-named folders below a source that is not one
SCRATCH_PREFIX = ".prepare_data."  # the temporary folder beside DIR_DATA, removed whatever happens


def alias_text() -> str:
    """``CSet5, CSet14, ...``: the sets' other names, as data/standard_sets.json spells them."""
    return ", ".join(a for s, aliases in set_aliases().items() if s in SET_ORDER for a in aliases)


def set_alias(name: str) -> tuple[str, str] | None:
    """(alias, set) that ``name`` is or starts with before a non-alphanumeric (``BSD100_x``), or None."""
    low = name.lower()
    return next(((alias, s) for alias, s in set_names().items() if s in SET_ORDER
                 and (low == alias or (low.startswith(alias) and not low[len(alias)].isalnum()))), None)


def canonical_set(name: str) -> str | None:
    """The set a folder or archive name stands for (``BSD100_x`` -> B100), or None."""
    found = set_alias(name)
    return found[1] if found else None


def find_sets(root: str, label: str, hint: str | None) -> list[tuple[str, str, str]]:
    """(set, folder, its name) of ``root`` itself, else of set-named folders below, else ``hint``."""
    if set_name := canonical_set(label):
        return [(set_name, root, label)]
    found, level = [], [root]
    for _ in range(SEARCH_DEPTH):
        below = []
        for folder in level:
            with os.scandir(folder) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    if not entry.is_dir(follow_symlinks=False) or entry.name in SKIPPED_DIRS \
                            or entry.name.startswith("."):  # hidden, as walk_images; our scratch
                        continue
                    if set_name := canonical_set(entry.name):
                        found.append((set_name, entry.path, entry.name))
                    else:
                        below.append(entry.path)
        level = below
    if found or hint:
        return found or [(hint, root, label)]
    raise PrepareError(f"{label}: no test set found: name the folder or archive after one of "
                       f"{', '.join(SET_ORDER)} or {alias_text()}, any case (or give a folder "
                       "holding such folders)")


def special_kind(path: str) -> str | None:
    """What ``path`` is (links followed) if neither a regular file nor a folder, else None; only
    stat()ed: a named pipe opened would block, a device (/dev/zero) never ends."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = utility.file_kind(mode, "not a regular file")
    return f"a link to {os.path.realpath(path)}, {kind}" if os.path.islink(path) else kind


def check_source(src: str) -> None:
    """A PrepareError unless ``src`` is a folder or a regular file, links followed; never opened."""
    if not os.path.exists(src):
        broken = " (a broken link)" if os.path.islink(src) else ""
        raise PrepareError(f"{src}: no such file or folder{broken}")
    if kind := special_kind(src):
        raise PrepareError(f"{src}: {kind}, not a file or folder; give a folder or a .zip/.tar archive")


def walk_images(root: str) -> list[tuple[list[str], str]]:
    """(folder parts below root, path) of every image file, sorted; train, hidden folders skipped;
    a PrepareError for one with a control character, not a regular file, or too large."""
    images = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                         and not TRAIN_DIR.search(d))
        rel = os.path.relpath(folder, root)
        for name in sorted(n for n in files if n.lower().endswith(IMAGE_EXTENSIONS) and n[0] != "."):
            path = os.path.join(folder, name)
            if BAD_NAME_CHARS.search(os.path.relpath(path, root)):
                raise PrepareError(f"{path!r}: a control character or bytes that are not UTF-8 in "
                                   "the name; rename or remove it")
            if not os.path.exists(path):
                raise PrepareError(f"{path}: a broken link; remove it")
            if kind := special_kind(path):
                raise PrepareError(f"{path}: {kind}, not an image file; remove it")
            if os.path.getsize(path) > archives.MAX_MEMBER_BYTES:
                raise PrepareError(f"{path}: {os.path.getsize(path)} bytes, more than any test "
                                   f"image ({archives.MAX_MEMBER_BYTES}); remove it")
            images.append(([] if rel == "." else rel.split(os.sep), path))
    return images


def lr_scale(parts: list[str]) -> int | None:
    """The scale of an LR folder (``LR_bicubic/X2``, ``LRbicx2``) among ``parts``, deepest first."""
    for i in reversed(range(len(parts))):
        if m := LR_NAMED_DIR.search(parts[i]):
            return int(m.group(1))
        if (m := LR_SCALE_DIR.match(parts[i])) and any("lr" in p.lower() for p in parts[:i]):
            return int(m.group(1))
    return None


def hr_rank(parts: list[str]) -> int | None:
    """How sure a file in folder ``parts`` (the source's name first) is an HR image; None: not one."""
    if HR_DIR.match(parts[-1]):
        return RANK_HR_DIR
    if len(parts) == 1 or canonical_set(parts[-1]):
        return RANK_SET_DIR
    return RANK_GTMOD if GTMOD_DIR.match(parts[-1]) else None


@dataclass
class Found:
    """What a source holds of one set: files by image name (rank: how sure it is an HR image)."""

    hr: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (rank, path)
    lr: dict[tuple[int, str], str] = field(default_factory=dict)  # (scale, file stem) -> path
    rainy: dict[str, str] = field(default_factory=dict)  # id -> path
    clean: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def add_hr(self, name: str, rank: int, path: str) -> None:
        """Record an HR file unless a surer one (lower rank) or, for SelfExSR, a larger one is known."""
        old_rank, old_path = self.hr.get(name, (rank + 1, ""))
        if rank == old_rank and rank != RANK_SELFEXSR:
            add_once({name: old_path}, name, path, "HR image")
        if rank > old_rank or (rank == old_rank and math.prod(image_size(path))
                               <= math.prod(image_size(old_path))):
            return  # SelfExSR: each scale's HR may be cropped to a multiple of it; keep the largest
        self.hr[name] = (rank, path)

    def add_rain(self, parts: list[str], path: str) -> None:
        """Record a rainy or clean image by id: ``rain-<id>``/``norain-<id>`` or rainy/ and norain/."""
        name, parent = stem(path), parts[-1].lower()
        m = RAIN_NAME.match(name)
        if not m and parent not in RAINY_DIRS + CLEAN_DIRS:
            self.ignored.append(path)
            return
        clean = bool(m.group(1)) if m else parent in CLEAN_DIRS
        add_once(self.clean if clean else self.rainy, m.group(2) if m else name, path,
                 "clean image" if clean else "rainy image")


def add_once(table: dict, key, path: str, what: str) -> None:
    """table[key] = path; a PrepareError if another file already has that key."""
    if key in table:
        name = key[-1] if isinstance(key, tuple) else key
        raise PrepareError(f"{path}: a second {what} named {name!r} (the first: {table[key]}); "
                           "keep one")
    table[key] = path


def collect(folder: str, set_name: str, label: str) -> Found:
    """The HR, LR and rain files of ``set_name`` in ``folder`` (named ``label``), by layout."""
    found = Found()
    for parts, path in walk_images(folder):
        parts = [label] + parts
        name, selfexsr = stem(path), SELFEXSR_NAME.match(stem(path))
        if set_name == RAIN_SET:
            found.add_rain(parts, path)
        elif selfexsr and selfexsr["kind"].upper() == "HR":
            found.add_hr(selfexsr["name"], RANK_SELFEXSR, path)
        elif selfexsr and selfexsr["kind"].upper() == "LR":
            found.lr[(int(selfexsr["scale"]), selfexsr["name"])] = path
        elif selfexsr:
            continue  # SelfExSR's method outputs (bicubic, A+, SRCNN ...)
        elif (scale := lr_scale(parts)) is not None:
            add_once(found.lr, (scale, name), path, f"LR x{scale} image")
        elif (rank := hr_rank(parts)) is not None:
            found.add_hr(name, rank, path)
        else:
            found.ignored.append(path)
    return found


def standard_names(hr: dict[str, str], spec: SetSpec | None) -> dict[str, str]:
    """SelfExSR's img_001... mapped to the set's names by order, when every size agrees; else {}."""
    if spec is None or spec.sizes is None or len(hr) != len(spec.sizes):
        return {}
    ours = sorted(hr)
    if set(ours) == set(spec.sizes) or not all(SELFEXSR_NUMBERED.match(n) for n in ours):
        return {}
    theirs = sorted(spec.sizes, key=str.lower)
    for mine, name in zip(ours, theirs, strict=True):
        size, want = image_size(hr[mine]), spec.sizes[name]
        if size != want and not any(size == cropped(want, s) for s in SCALES):
            return {}
    return dict(zip(ours, theirs, strict=True))


def copy_image(src: str, dst: str) -> None:
    """``src`` at ``dst`` as PNG, atomically: a PNG's bytes as they are (verified), others decoded."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not src.lower().endswith(".png"):
        save_image(read_image(src), dst)
        return
    try:
        with Image.open(src) as img:
            img.verify()
    except DECODE_ERRORS + (struct.error,) as e:
        raise ImageReadError(f"cannot read image {src!r}: {e}") from None
    runfolder.atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


@dataclass
class Conversion:
    """One run's standard sets, DIR_DATA, scratch folder and what its sources gave: each set under
    one name only, each file once."""

    specs: dict[str, SetSpec]
    out: str
    scratch: str = ""  # made by `transaction`, once the sources are known
    sets: dict[str, tuple[str, str]] = field(default_factory=dict)  # set -> (its name, folder)
    files: dict[str, str] = field(default_factory=dict)  # file under DIR_DATA -> the file it is from
    shown: tuple[str, str] = ("", "")  # (extraction folder, the archive named in its place)

    def show(self, path: str) -> str:
        """``path`` as the user knows it: a file extracted from an archive as <archive>/<member>."""
        root, src = self.shown
        return src + path[len(root):] if root and path.startswith(root) else path

    def take_sets(self, found: Sequence[tuple[str, str, str]]) -> None:
        """Note each (set, folder, its name); a PrepareError for a set taken under another name."""
        for set_name, folder, name in found:
            alias = set_alias(name)  # None: a --download archive, named by the set it is for
            key = alias[0] if alias else set_name.lower()
            first_key, first = self.sets.setdefault(set_name, (key, self.show(folder)))
            if first_key != key:
                raise PrepareError(f"{first} and {self.show(folder)} are both {set_name}; give "
                                   "each set once")

    def put(self, path: str, rel: str) -> None:
        """Copy ``path`` to ``rel`` under the scratch folder's out/; a PrepareError naming both if a
        file went there before (two copies of one image: which one to keep is not for us to guess)."""
        first = self.files.setdefault(rel, self.show(path))
        if first != self.show(path):
            raise PrepareError(f"{first} and {self.show(path)} would both be {rel} in --out; give "
                               "one of them")
        copy_image(path, os.path.join(self.scratch, "out", rel))

    def convert_source(self, src: str, hint: str | None = None) -> None:
        """Write the sets of a folder or archive (extracted in the scratch folder) to its out/."""
        root = src if os.path.isdir(src) else tempfile.mkdtemp(prefix="extract.", dir=self.scratch)
        try:
            if root != src:
                extract(src, root)
            label = folder_label(src) if root == src else archive_stem(src) or stem(src)
            self.shown = (root, src) if root != src else ("", "")
            sets = find_sets(root, label, hint)
            self.take_sets(sets)  # all before any is read: a set given twice writes nothing
            for set_name, folder, name in sets:
                found = collect(folder, set_name, name)
                summary = write_found(found, set_name, self)
                ignored = f"; {len(found.ignored)} files in no known layout skipped (first: " \
                          f"{found.ignored[0].replace(root, src, 1)})" if found.ignored else ""
                taken = f" ({name} -> {set_name})" if name != set_name else ""
                print(f"{set_name} <- {src}{taken}: {summary}{ignored}")
        except (PrepareError, ArchiveError, ImageReadError) as e:  # members as <archive>/<member>
            raise PrepareError(str(e).replace(root, src)) from None
        finally:
            if root != src:
                shutil.rmtree(root, ignore_errors=True)

    def download(self, set_name: str, url: str | None, sha256: str | None) -> None:
        """Fetch the set's files (checked) into the scratch folder and convert them."""
        folder = tempfile.mkdtemp(prefix="download.", dir=self.scratch)
        for item in downloads.planned_downloads(set_name, url, sha256):
            print(f"downloading {item.url}")
            path = downloads.download(item.url, item.sha256, folder, item.size)
            self.convert_source(path, set_name)
            os.remove(path)


def write_found(found: Found, set_name: str, run: Conversion) -> str:
    """Write ``found`` into the scratch folder's out/ in the layout (LR matched to HR there or in
    DIR_DATA); a summary."""
    folder = HR_DIRS[set_name][0]
    if set_name == RAIN_SET:
        for prefix, files in (("rain", found.rainy), ("norain", found.clean)):
            for key, path in files.items():
                run.put(path, os.path.join(folder, f"{prefix}-{key}.png"))
        return f"{len(found.rainy)} rainy and {len(found.clean)} clean images"
    hr = {name: path for name, (_, path) in found.hr.items()}
    renamed = standard_names(hr, run.specs.get(set_name))
    for name, path in hr.items():
        run.put(path, os.path.join(folder, f"{renamed.get(name, name)}.png"))
    known = set(hr) | {stem(p) for d in (os.path.join(run.scratch, "out"), run.out)
                       if os.path.isdir(os.path.join(d, folder))
                       for p in list_images(os.path.join(d, folder))}
    lr = found.lr if set_name in SR_SETS else {}
    for (s, file_stem), path in lr.items():
        name = lr_name(file_stem, s, known)
        run.put(path, os.path.join(LR_DIRS[set_name][0].format(s=s), f"{renamed.get(name, name)}x{s}.png"))
    note = f" (SelfExSR's {min(renamed)}..{max(renamed)} named as the set's images)" if renamed else ""
    return f"{len(hr)} HR images, {len(lr)} LR files{note}"


Undo = list[tuple[str, str | None]]  # merge's steps: (made under DIR_DATA, its old file kept in)


def merge(staged: str, out: str, scratch: str, undo: Undo) -> None:
    """Move the files under ``staged`` into ``out`` (replaced ones kept in ``scratch``), each step
    noted in ``undo``; a stop signal acted on once the moves (renames, quick) are over."""
    moves = [(os.path.join(folder, name),
              os.path.normpath(os.path.join(out, os.path.relpath(folder, staged), name)))
             for folder, _, files in os.walk(staged) for name in files]
    for _, dst in moves:
        if os.path.isdir(dst):
            raise PrepareError(f"{dst}: a folder where an image goes; remove it")
    if not moves:
        return
    kept = tempfile.mkdtemp(prefix="kept.", dir=scratch)
    with stops.StopSignals() as held:
        for src, dst in moves:
            missing, folder = [], os.path.dirname(dst)
            while not os.path.lexists(folder):  # stops at out, which exists
                missing.append(folder)
                folder = os.path.dirname(folder)
            for folder in reversed(missing):  # outermost first
                os.mkdir(folder)
                undo.append((folder, None))
            old = None
            if os.path.lexists(dst):
                old = os.path.join(kept, os.path.relpath(dst, out))
                os.makedirs(os.path.dirname(old), exist_ok=True)
                shutil.move(dst, old)
            undo.append((dst, old))  # before the move: a failed one leaves nothing to remove
            shutil.move(src, dst)
    if held.received is not None:
        raise stops.Interrupted(held.received)


def unmerge(undo: Undo, prog: str) -> None:
    """Undo `merge`'s steps, last first; what cannot be put back is named on stderr."""
    for path, old in reversed(undo):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.remove(path)
            if old is not None:
                shutil.move(old, path)
        except OSError as e:
            print(f"{prog}: cannot put back {path} as it was: {e}", file=sys.stderr)
    undo.clear()


@contextlib.contextmanager
def transaction(out: str, prog: str) -> Iterator[tuple[str, Undo]]:
    """A scratch folder beside ``out`` (files move in by renaming) and `merge`'s steps, undone on any
    exception (a stop too); the folder removed whatever happens; both with stops held off."""
    try:
        scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=os.path.dirname(os.path.realpath(out)))
    except PermissionError:
        scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out)
    undo: Undo = []
    try:
        yield scratch, undo
    except BaseException:
        with stops.StopSignals():
            unmerge(undo, prog)
        raise
    finally:
        with stops.StopSignals():
            shutil.rmtree(scratch, ignore_errors=True)


def folder_label(src: str) -> str:
    """The name a folder source is read by (``downloads/CSet14/`` -> CSet14)."""
    return os.path.basename(os.path.normpath(os.path.abspath(src)))


def convert(srcs: Sequence[str], out: str, specs: dict[str, SetSpec], prog: str,
            fetch: tuple[str, str | None, str | None] | None = None) -> list:
    """Convert ``fetch`` (set, url, sha256) and ``srcs``, check ``out`` and make its missing LR
    files, all moved in at the end: on any failure or stop ``out`` is left as it was."""
    for src in srcs:
        check_source(src)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out}: not a folder")
    run = Conversion(specs, out)
    for src in srcs:  # a set given twice (CSet14 and Set14) is refused before any is read
        if os.path.isdir(src):
            run.take_sets(find_sets(src, folder_label(src), None))
    created = not os.path.lexists(out)
    try:
        with stops.StopSignals(raise_=True):
            os.makedirs(out, exist_ok=True)
            with transaction(out, prog) as (scratch, undo):
                run.scratch = scratch
                if fetch:
                    run.download(*fetch)
                for src in srcs:
                    run.convert_source(src)
                merge(os.path.join(scratch, "out"), out, scratch, undo)
                reports = check_tree(out, specs, lr_into=os.path.join(scratch, "lr"))
                merge(os.path.join(scratch, "lr"), out, scratch, undo)
        return reports
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty
        raise


def check(dir_data: str, specs: dict[str, SetSpec], make_lr: bool, prog: str) -> list:
    """The SetReports of ``dir_data``; the LR files made (make_lr) moved in at the end, as `convert`'s."""
    if not os.path.isdir(dir_data):
        raise PrepareError(f"--check {dir_data}: "
                           f"{'not a folder' if os.path.lexists(dir_data) else 'no such folder'}")
    if make_lr:
        return convert([], dir_data, specs, prog)
    with stops.StopSignals(raise_=True):
        return check_tree(dir_data, specs)
