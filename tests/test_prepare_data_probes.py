"""Hostile input for python -m scripts.prepare_data: pipes and devices, duplicate members, zip and tar
bombs (under limits lowered to a few KB), odd member names. Every bad input is one line on stderr
with exit status 2, and leaves nothing in --out or beside it."""
from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

import stops
from data import archives, prepare
from test_data_probes import SPECIAL_KINDS, special_entry
from test_prepare_data import TINY_SETS, rgb, run, save, tiny_table  # noqa: F401 (autouse fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_TIMEOUT = 60  # seconds; a probe that hangs never ends, the fixed script exits in ~3 s
LIMIT = 50_000  # bytes: the member limit the bomb tests lower MAX_MEMBER_BYTES to
BOMB = 4 * LIMIT  # zeros a bomb member inflates to (deflated: a few hundred bytes)
NAMES = tuple(TINY_SETS["Set5"]["images"])  # baby, bird


def png_bytes(w: int, h: int, seed: int = 0) -> bytes:
    """A random colour PNG, as bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb(w, h, seed)).save(buf, "PNG")
    return buf.getvalue()


SET5_PNGS = {f"HR/{n}.png": png_bytes(*TINY_SETS["Set5"]["images"][n], i)
             for i, n in enumerate(NAMES)}


def files_under(root) -> set[str]:
    """Every file (and link) below ``root``, relative to it."""
    return {os.path.relpath(os.path.join(d, f), root) for d, dirs, fs in os.walk(root)
            for f in fs + [x for x in dirs if os.path.islink(os.path.join(d, x))]}


def assert_refused(rc: int, err: str, root, *named: str, out: str = "data") -> None:
    """Exit status 2, one line naming ``named``, and in ``root`` no scratch folder and no ``out``
    (the run made it; "" where it was there before)."""
    assert rc == 2 and err.count("\n") == 1 and err.startswith("prepare_data.py: "), err
    for text in named:
        assert text in err, err
    left = [f for f in os.listdir(root) if f.startswith(prepare.SCRATCH_PREFIX) or f == out]
    assert left == [], left


# ----------------------------------------------------------------------------------------
# 1, 2. Pipes and devices: refused after a stat(), never opened (hangs need a real process)
# ----------------------------------------------------------------------------------------
SPECIAL_PROBES = {  # case: (the SRC, the entry made in it, a FIFO or a link to /dev/zero, its words)
    "fifo_source": ("Set5.zip", "Set5.zip", "fifo", "a named pipe (FIFO)"),
    "dev_zero_source": ("Set5.zip", "Set5.zip", "zero", "a link to /dev/zero, a character device"),
    # not a PNG: the old code decoded it, and waited
    "fifo_image": ("Set5", "Set5/HR/baby.bmp", "fifo", "a named pipe (FIFO)"),
    "dev_zero_image": ("Set5", "Set5/HR/baby.png", "zero", "a link to /dev/zero"),  # copied, without end
}


@pytest.fixture(scope="module")
def special_runs(tmp_path_factory) -> dict[str, tuple]:
    """Each SPECIAL_PROBES case run by the script in a process of its own (a hang needs one), all
    side by side: (its folder, the return code, stdout, stderr; None, None where it hung)."""
    procs = {}
    for case, (src, entry, kind, _) in SPECIAL_PROBES.items():
        root = tmp_path_factory.mktemp(case)
        if src == "Set5":
            save(root / "Set5/HR/bird.png", 20, 24)
        os.mkfifo(root / entry) if kind == "fifo" else os.symlink("/dev/zero", root / entry)
        procs[case] = (root, subprocess.Popen(
            [sys.executable, "-m", "scripts.prepare_data", str(root / src), "--out", str(root / "data")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs = {}
    try:
        for case, (root, proc) in procs.items():
            try:
                runs[case] = (root, proc.wait(PROBE_TIMEOUT), *proc.communicate())
            except subprocess.TimeoutExpired:
                runs[case] = (root, None, None, None)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return runs


@pytest.mark.parametrize("case", SPECIAL_PROBES)
def test_pipes_and_devices_refused_unopened(special_runs, case):
    root, rc, out, err = special_runs[case]
    _, entry, _, kind = SPECIAL_PROBES[case]
    if rc is None:
        pytest.fail(f"scripts.prepare_data on {case} did not end in {PROBE_TIMEOUT} s")
    assert out == ""
    assert_refused(rc, err, root, f"{root / entry}: {kind}")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_check_names_an_hr_entry_that_is_no_regular_file(tmp_path, capsys, kind):
    """--check listed only regular files, so z.png -> /dev/zero was not among the problems."""
    hr = tmp_path / "data/benchmark/Set14/HR"
    save(hr / "comic.png", 25, 19)
    words = special_entry(hr / "z.png", kind)
    rc, out, err = run(capsys, "--check", tmp_path / "data", "--make_lr")
    problems = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert (rc, err) == (1, "") and out.startswith("Set14: 1 of 1 images, LR x2 x3 x4 complete"), out
    assert any(p.startswith(f"{hr / 'z.png'}: cannot read image") and words in p for p in problems)


@pytest.mark.parametrize("name", ["esc\x1b[31mred", "new\nSet14: 3 of 3 images", "rtl\u202egnp.exe"])
def test_check_prints_a_problem_on_one_line_whatever_the_file_name(tmp_path, capsys, name):
    """A name with a line break forged a line of the report, one with ESC reached the terminal."""
    hr = tmp_path / "data/benchmark/Set14/HR"
    save(hr / "comic.png", 25, 19)
    save(hr / f"{name}.png", 25, 19)
    rc, out, err = run(capsys, "--check", tmp_path / "data", "--make_lr")
    assert (rc, err) == (1, "")
    assert all(line.isprintable() for line in out.splitlines())
    shown = repr(name)[1:-1]  # \x1b, \n, \u202e written out
    assert [line for line in out.splitlines() if shown in line] == [
        f"  {hr / shown}.png: not an image of Set14"], out


# ----------------------------------------------------------------------------------------
# 3. Two members of one name (also once normalised: ./ and \)
# ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile writes it, with a warning
@pytest.mark.parametrize("kind, second", [("zip", "Set5/HR/baby.png"), ("tar", "Set5/HR/baby.png"),
                                          ("zip", "Set5/./HR\\baby.png")])
def test_duplicate_members_refused(tmp_path, capsys, kind, second):
    (tmp_path / "in").mkdir()
    archive = tmp_path / f"in/Set5.{kind}"
    members = [("Set5/HR/baby.png", png_bytes(24, 20, 0)),
               ("Set5/HR/bird.png", png_bytes(20, 24, 1)),
               (second, png_bytes(24, 20, 2))]  # the old code kept this one, without a word
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        with tarfile.open(archive, "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    rc, _, err = run(capsys, archive, "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, str(archive), f"two members named {second!r}",
                   "(the first: 'Set5/HR/baby.png')")


# ----------------------------------------------------------------------------------------
# 4. Bombs: sizes checked as declared and as read; nothing left behind
# ----------------------------------------------------------------------------------------
@pytest.fixture
def small_limits(monkeypatch) -> list[str]:
    """MAX_MEMBER_BYTES lowered to LIMIT, reads of 4 KB; yields the paths Extractor.write made."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", LIMIT)
    monkeypatch.setattr(archives, "CHUNK_BYTES", 4096)
    written: list[str] = []
    write = archives.Extractor.write

    def spy(self, stream, path, name):
        written.append(path)
        return write(self, stream, path, name)

    monkeypatch.setattr(archives.Extractor, "write", spy)
    return written


def bomb_archive(path, kind: str, members: dict[str, bytes]) -> None:
    """A deflated zip or a tar.gz holding ``members``."""
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return
    where = {"fileobj": path} if isinstance(path, io.IOBase) else {"name": path}
    with tarfile.open(mode="w:gz", **where) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind, suffix", [("zip", ".zip"), ("tar", ".tar.gz")])
def test_bomb_member_refused_before_a_byte_is_written(tmp_path, capsys, small_limits, kind, suffix):
    (tmp_path / "in").mkdir()
    archive = tmp_path / f"in/Set5{suffix}"
    bomb_archive(archive, kind, {**SET5_PNGS, "HR/comic.png": b"\0" * BOMB})
    assert os.path.getsize(archive) < LIMIT // 10
    rc, _, err = run(capsys, archive, "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, f"member 'HR/comic.png' declares {BOMB} bytes",
                   f"more than any test image ({LIMIT})")
    assert small_limits == []  # the tar's headers are all read before its first member is written


@pytest.mark.parametrize("kind, suffix", [("zip", ".zip"), ("tar", ".tar.gz")])
def test_bombs_under_the_member_limit_leave_nothing(tmp_path, capsys, small_limits, kind, suffix):
    """Under the member limit but past the archive's: refused before writing; under both but not
    an image: refused at the copy (the old code left it in --out after 'cannot identify image')."""
    (tmp_path / "in").mkdir()
    archive = tmp_path / f"in/Set5{suffix}"
    zeros = {f"HR/z{i}.png": b"\0" * (LIMIT - 1) for i in range(3)}
    bomb_archive(archive, kind, {**SET5_PNGS, **zeros})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archives, "MAX_EXTRACT_BYTES", 2 * LIMIT)
        rc, _, err = run(capsys, archive, "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, f"declares more than {2 * LIMIT} bytes")
    assert small_limits == []
    rc, _, err = run(capsys, archive, "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, f"{archive}/HR/z0.png", "cannot identify image")
    assert len(small_limits) >= 3


def lie_about_size(data: bytearray, name: str, size: int) -> None:
    """Set member ``name``'s uncompressed size to ``size`` in its local header and its central
    directory entry (the zip format's offsets)."""
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while data[at + name_at:at + name_at + len(encoded)] != encoded:
            at = data.find(signature, at + 1)
            assert at >= 0, f"no {signature!r} header for {name}"
        struct.pack_into("<I", data, at + size_at, size)


def test_member_larger_than_declared_refused(tmp_path, capsys, small_limits):
    """A zip whose headers say 1000 bytes for a member of BOMB: zipfile stops at 1000 and its
    checksum fails; nothing is left."""
    buf = io.BytesIO()
    bomb_archive(buf, "zip", {**SET5_PNGS, "HR/comic.png": b"\0" * BOMB})
    data = bytearray(buf.getvalue())
    lie_about_size(data, "HR/comic.png", 1000)
    (tmp_path / "in").mkdir()
    (tmp_path / "in/Set5.zip").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "in/Set5.zip") as zf:
        assert zf.getinfo("HR/comic.png").file_size == 1000
    rc, _, err = run(capsys, tmp_path / "in/Set5.zip", "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, "cannot extract: Bad CRC-32 for file 'HR/comic.png'")
    assert len(small_limits) == 3  # baby, bird, then comic: stopped at its declared 1000 bytes


class Endless(io.RawIOBase):
    """A stream of zeros that never ends (what a header that lies about its size can give)."""

    def __init__(self):
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        buf[:] = bytes(len(buf))
        self.given += len(buf)
        return len(buf)


def test_streaming_counter_stops_each_member_and_the_archive(tmp_path, small_limits, monkeypatch):
    """Whatever a member declared, the copy stops at the first chunk past a limit, its partial
    file removed: MAX_MEMBER_BYTES per member, MAX_EXTRACT_BYTES over the archive."""
    ex = archives.Extractor("Set5.zip", str(tmp_path))
    stream = Endless()
    with pytest.raises(archives.ArchiveError, match=f"'HR/a.png' holds more than {LIMIT} "):
        ex.write(stream, str(tmp_path / "HR/a.png"), "HR/a.png")
    assert stream.given <= LIMIT + 4096 and not (tmp_path / "HR/a.png").exists()
    monkeypatch.setattr(archives, "MAX_EXTRACT_BYTES", LIMIT + LIMIT // 2)
    ex = archives.Extractor("Set5.zip", str(tmp_path))
    ex.write(io.BytesIO(bytes(LIMIT)), str(tmp_path / "HR/b.png"), "HR/b.png")
    with pytest.raises(archives.ArchiveError, match=f"more than {LIMIT + LIMIT // 2} bytes"):
        ex.write(io.BytesIO(bytes(LIMIT)), str(tmp_path / "HR/c.png"), "HR/c.png")
    assert os.listdir(tmp_path / "HR") == ["b.png"]


def test_extracted_beside_out_and_out_untouched_on_failure(tmp_path, capsys, monkeypatch):
    """Archives go into a scratch folder beside --out, not the system's temporary folder; a bad
    second source leaves --out as it was (its old file kept, nothing of the first source added)."""
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    dests: list[str] = []
    extract = prepare.extract
    monkeypatch.setattr(prepare, "extract", lambda a, d: (dests.append(d), extract(a, d)))
    (tmp_path / "in").mkdir()
    bomb_archive(tmp_path / "in/Set5.zip", "zip", SET5_PNGS)
    bomb_archive(tmp_path / "in/Set14.zip", "zip", {"comic.png": b"not an image"})
    out = tmp_path / "work/data"
    save(out / "benchmark/B100/HR/old.png", 8, 8)
    rc, _, err = run(capsys, tmp_path / "in/Set5.zip", tmp_path / "in/Set14.zip", "--out", out)
    assert_refused(rc, err, tmp_path / "work", "Set14.zip/comic.png", "cannot identify image",
                   out="")
    assert [os.path.dirname(os.path.dirname(d)) for d in dests] == [str(tmp_path / "work")] * 2
    assert files_under(out) == {"benchmark/B100/HR/old.png"} and os.listdir(system_tmp) == []
    rc, out_text, err = run(capsys, tmp_path / "in/Set5.zip", "--out", out)  # the good one alone
    assert (rc, err) == (1, "") and "Set5: 2 of 2 images, LR x2 x3 x4 complete (6 made)" in out_text
    assert sorted(os.listdir(tmp_path / "work")) == ["data"]


# ----------------------------------------------------------------------------------------
# 5. Any other bad input: one line, exit status 2, nothing in --out or beside it
# ----------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PIXEL_BOMB = (b"\x89PNG\r\n\x1a\n"  # a PNG declaring 100000 x 100000 pixels
              + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10 ** 5, 10 ** 5, 8, 2, 0, 0, 0))
              + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def truncated_tar_gz() -> bytes:
    """A tar.gz of Set5's images, cut in half."""
    buf = io.BytesIO()
    bomb_archive(buf, "tar", SET5_PNGS)
    return buf.getvalue()[:len(buf.getvalue()) // 2]


BAD_INPUTS = [  # (file name, its bytes or zip members, what the line names: one text or several)
    ("Set5.zip", b"PK\x03\x04" + bytes(range(256)) * 4, "not a folder, .zip or .tar archive"),
    ("Set5.tar.gz", truncated_tar_gz, "cannot extract"),
    ("Set5.zip", {**SET5_PNGS, "HR/comic.png": PIXEL_BOMB}, "Set5.zip/HR/comic.png"),
    ("Set5.zip", {**SET5_PNGS, "HR/comic.png": SET5_PNGS["HR/baby.png"][:60]}, "Set5.zip/HR/comic"),
    ("Set5.zip", {**SET5_PNGS, "HR/comic.bmp": b"BM not a bitmap"}, "Set5.zip/HR/comic.bmp"),
    ("Set5.zip", {**SET5_PNGS, "HR/x\nSet5: 5 of 5 images.png": png_bytes(8, 8)},  # a forged line
     ("'HR/x\\nSet5: 5 of 5 images.png'", "control character")),
]


@pytest.mark.parametrize("name, contents, named", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, capsys, name, contents, named):
    """The old code copied the undecodable images into --out and reported them after (exit 1)."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / name
    if isinstance(contents, dict):
        bomb_archive(path, "zip", contents)
    else:
        path.write_bytes(contents() if callable(contents) else contents)
    rc, _, err = run(capsys, path, "--out", tmp_path / "data")
    assert_refused(rc, err, tmp_path, *((named,) if isinstance(named, str) else named))


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_out_that_is_not_a_folder(tmp_path, capsys, kind):
    out = tmp_path / "data"
    os.mkfifo(out) if kind == "fifo" else out.write_text("x")
    (tmp_path / "Set5/HR").mkdir(parents=True)
    rc, _, err = run(capsys, tmp_path / "Set5", "--out", out)
    assert rc == 2 and err == f"prepare_data.py: --out {out}: not a folder\n"
    rc, _, err = run(capsys, "--check", out)
    assert rc == 2 and err == f"prepare_data.py: --check {out}: not a folder\n"
    assert sorted(os.listdir(tmp_path)) == ["Set5", "data", "sets.json"]


# ----------------------------------------------------------------------------------------
# Any member name: refused in one line, or written under --out only
# ----------------------------------------------------------------------------------------
PRINTABLE = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                    max_size=10)
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                   max_size=10)  # control characters too: the script refuses those
NAME_PARTS = st.sampled_from(["..", ".", "", "HR", "LR_bicubic", "X2", "Set5", "<b>x</b>",
                              "`id`", "$(id)", "baby.png", "babyx2.png", "C:", "\\", "~",
                              "\u202e", "\u00e9\u0301", "con", "a" * 300])
MEMBER_NAMES = st.tuples(
    st.sampled_from(["", "", "", "", "", "./", "/", "../", "/tmp/", "C:\\"]),  # mostly relative
    st.lists(st.one_of(NAME_PARTS, PRINTABLE, PRINTABLE, PRINTABLE, ANY_TEXT), min_size=1,
             max_size=4).map("/".join),
    st.sampled_from(["", ".png", ".PNG", ".bmp", "/"]),
).map("".join).filter(bool)  # zipfile cannot write an empty name
ODD_PNG = png_bytes(8, 8, 5)


@settings(max_examples=60)
@given(name=MEMBER_NAMES)
def test_any_member_name_refused_or_written_under_out(tmp_path, capsys, monkeypatch, name):
    case = tempfile.mkdtemp(dir=tmp_path)
    archive = os.path.join(case, "in", "Set5.zip")
    os.mkdir(os.path.dirname(archive))
    with zipfile.ZipFile(archive, "w") as zf:
        for member, data in SET5_PNGS.items():
            zf.writestr(member, data)
        zf.writestr(name, ODD_PNG)
    absolute = name.replace("\\", "/")
    absolute = absolute if absolute.startswith("/") else None
    existed = absolute is not None and os.path.lexists(absolute)
    written: list[str] = []
    write = archives.Extractor.write
    monkeypatch.setattr(archives.Extractor, "write",
                        lambda self, s, p, n: (written.append(os.path.realpath(p)),
                                               write(self, s, p, n)))
    out = os.path.join(case, "work", "data")
    rc, _, err = run(capsys, archive, "--out", out)
    work = os.path.join(case, "work")
    assert all(p.startswith(os.path.join(os.path.realpath(work), prepare.SCRATCH_PREFIX))
               for p in written)
    if absolute is not None:
        assert os.path.lexists(absolute) == existed
    assert rc in (0, 1, 2)
    event(f"exit status {rc}")  # pytest --hypothesis-show-statistics: how many of each
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("prepare_data.py: "), err
        assert files_under(case) == {"in/Set5.zip"}
        return
    assert err == ""
    assert {f for f in files_under(case) if not f.startswith("work/data/")} == {"in/Set5.zip"}
    assert os.listdir(work) == ["data"]
    for n in NAMES:
        with open(os.path.join(out, "benchmark/Set5/HR", f"{n}.png"), "rb") as f:
            assert f.read() == SET5_PNGS[f"HR/{n}.png"]


# ----------------------------------------------------------------------------------------
# 6. A stop signal while the missing LR files are made: one line, 130, --out as it was
# ----------------------------------------------------------------------------------------
LR_PHASE_IMAGES = 40  # HR images whose LR files take about a second to make: the stop lands then
POLL_S = 0.005


def tree_bytes(root) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes."""
    return {f: open(os.path.join(root, f), "rb").read() for f in files_under(root)}


def making_lr(work) -> bool:
    """Whether an LR file was made below ``work`` (in --out or the scratch folder beside it): the
    run is in its last phase, as the sources hold no LR files."""
    return any(files and "LR_bicubic" in folder for folder, _, files in os.walk(work))


def test_a_stop_while_lr_files_are_made_leaves_out_as_it_was(tmp_path):
    """The LR files were made in --out after the move, outside the stop handling: SIGTERM killed
    it (143, no line) and left the images moved in and the LR files made so far. SIGTERM to the
    pid and to the process group, in two runs side by side (the time of one start)."""
    for i in range(LR_PHASE_IMAGES):
        save(tmp_path / f"Urban100/img_{i + 1:03d}.png", 64, 48, i)
    runs: dict[str, tuple[subprocess.Popen, dict[str, bytes]]] = {}
    try:
        for target in ("pid", "group"):
            out = tmp_path / target / "data"
            save(out / "benchmark/Urban100/HR/img_001.png", 8, 8, 99)  # replaced, then put back
            (out / "notes.txt").write_text("mine")
            runs[target] = (subprocess.Popen(
                [sys.executable, "-m", "scripts.prepare_data", str(tmp_path / "Urban100"), "--out",
                 str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=target == "group"), tree_bytes(out))
        deadline, waiting = time.monotonic() + PROBE_TIMEOUT, set(runs)
        while waiting:
            for target in sorted(waiting):
                proc = runs[target][0]
                if making_lr(tmp_path / target):
                    os.killpg(proc.pid, signal.SIGTERM) if target == "group" \
                        else proc.send_signal(signal.SIGTERM)
                    waiting.remove(target)
                else:
                    assert proc.poll() is None, (target, proc.communicate())
            assert time.monotonic() < deadline, f"no LR file made by {sorted(waiting)}"
            time.sleep(POLL_S)
        errors = {target: proc.communicate(timeout=PROBE_TIMEOUT)[1]
                  for target, (proc, _) in runs.items()}
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for target, (proc, before) in runs.items():
        assert proc.returncode == stops.INTERRUPTED, (target, errors[target])
        assert errors[target] == "prepare_data.py: stopped by SIGTERM; nothing was written\n"
        assert tree_bytes(tmp_path / target / "data") == before
        assert os.listdir(tmp_path / target) == ["data"]  # no scratch folder beside it
