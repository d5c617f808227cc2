"""scripts.scale.simulate_imagenet and scripts.scale.measure_loading as a user meets them: every bad
option or path refused in one line (exit status 2; 1 for a failed run), never a traceback, a hang
or a silent wrong result; SIGINT, SIGTERM and SIGUSR1, to the process or its whole group, stop
them with one line and exit status 130, leaving no process behind. Tiny trees (20 files)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import runfolder
from scripts.scale import measure_loading, simulate_imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMULATE = [sys.executable, "-m", "scripts.scale.simulate_imagenet"]  # run with cwd=ROOT
MEASURE = [sys.executable, "-m", "scripts.scale.measure_loading"]
TINY = ["--files", "20", "--classes", "2", "--pool", "4"]
QUICK = ["--steps", "2", "--throughput_batches", "1", "--workers", "1"]
PROBE_TIMEOUT_S = 60  # a run here takes a few seconds (most of it importing torch)
GONE_S = 20  # how long a stopped run's processes may take to end
HOUR_S = 3600
NAMES_AN_OPTION = re.compile(r"--\w+|\bROOT\b|\bFOLDER\b|\broot\b|\bfolder\b")


def one_line(err: str, prog: str) -> str:
    """The one line on stderr (asserted), starting with the script's name."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prog + ":"), err
    return lines[0]


def age(folder) -> None:
    """Set the folder's tree an hour back: its listing is cached (nothing changed just now)."""
    past = time.time() - HOUR_S
    for path, dirs, _ in os.walk(folder):
        for d in dirs:
            os.utime(os.path.join(path, d), (past, past))
    os.utime(folder, (past, past))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    """ROOT/train of a tiny simulated tree, unchanged for an hour (as far as mtimes go)."""
    root = tmp_path_factory.mktemp("imagenet") / "root"
    assert simulate_imagenet.main([str(root), *TINY]) == 0
    age(root / "train")
    return str(root / "train")


def session(leader: int) -> list[int]:
    """The live processes of the session ``leader`` started (start_new_session=True)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == leader and fields[0] != "Z":  # fields[3]: the session id
                found.append(int(entry))
    return found


def wait_for(test, limit_s: float = PROBE_TIMEOUT_S) -> None:
    """Poll until ``test()`` holds (asserted within ``limit_s``)."""
    start = time.monotonic()
    while not test():
        assert time.monotonic() - start < limit_s, "timed out waiting"
        time.sleep(0.02)


def stopped(process: subprocess.Popen, how: str, sig: int) -> tuple[int, str, list[int]]:
    """Send ``sig`` to the process (how="process") or its group; (status, stderr, processes of
    its session still alive after GONE_S), any left killed."""
    (os.killpg if how == "group" else os.kill)(process.pid, sig)
    try:
        _, err = process.communicate(timeout=PROBE_TIMEOUT_S)
        start = time.monotonic()
        while session(process.pid) and time.monotonic() - start < GONE_S:
            time.sleep(0.1)
        return process.returncode, err, session(process.pid)
    finally:
        for pid in session(process.pid):  # only what this test started
            os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.communicate()


# ----------------------------------------------------------------------------------------
# simulate_imagenet
# ----------------------------------------------------------------------------------------
def test_simulate_builds_finishes_and_refuses_other_options(tmp_path, capsys):
    """The tree and its record; a run again with the same options is fine, with other options
    refused (it would leave the old classes and record the new counts: a silent wrong tree;
    before: exit status 0)."""
    root = tmp_path / "root"
    assert simulate_imagenet.main([str(root), *TINY, "--shards", "2", "--shard_members", "3"]) == 0
    train = root / "train"
    assert sum(len(os.listdir(train / c)) for c in os.listdir(train)) == 20
    record = json.loads((root / "simulated.json").read_text())
    assert record["complete"] and record["files"] == 20 and record["seed"] == 0
    assert json.loads((root / "shards" / "shards.json").read_text())["shards"] == {
        "shard-000000.tar": 3, "shard-000001.tar": 3}
    for shard in ("shard-000000.tar", "shard-000001.tar"):  # before: repeated hard links were empty
        with tarfile.open(root / "shards" / shard) as tar:
            assert all(m.isfile() and m.size > 0 for m in tar)
    assert simulate_imagenet.main([str(root), *TINY, "--shards", "2", "--shard_members", "3"]) == 0
    record = json.loads((root / "simulated.json").read_text())
    capsys.readouterr()
    assert simulate_imagenet.main([str(root), "--files", "30", "--classes", "2",
                                   "--pool", "4"]) == 2
    line = one_line(capsys.readouterr().err, "simulate_imagenet.py")
    assert f"ROOT {root} holds a tree built with --files 20" in line
    assert json.loads((root / "simulated.json").read_text()) == record


def bad_root(tmp_path, kind: str) -> str:
    """A ROOT of the given kind under tmp_path."""
    path = tmp_path / "root"
    if kind == "file":
        path.write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it would wait for a writer forever
    elif kind == "under a file":
        path.write_text("x")
        path = path / "sub"
    elif kind == "broken link":
        os.symlink(tmp_path / "nowhere", path)
    elif kind == "another tree":  # e.g. a real ImageNet: no links are to be added to it
        (path / "train" / "n01440764").mkdir(parents=True)
    elif kind == "damaged record":
        path.mkdir()
        (path / "simulated.json").write_text("{not json")
    elif kind == "unwritable":
        path.mkdir()
        path.chmod(0o500)
        if os.access(path, os.W_OK):  # root writes anyway: a folder not even root can write in
            path = "/sys/kernel/ipt-test-root"
    return str(path)


@pytest.mark.parametrize("kind,says", [
    ("file", "is a file"), ("fifo", "is a named pipe"), ("under a file", "which is a file"),
    ("broken link", "is a broken link"), ("another tree", "not built by this script"),
    ("damaged record", "simulated.json: not readable JSON"), ("unwritable", "cannot be written")])
def test_simulate_refuses_a_bad_root(tmp_path, capsys, kind, says):
    """Before: a file, a pipe or an unwritable ROOT was a failed run (exit status 1, the
    system's words); another tree under ROOT/train got links added (exit status 0)."""
    root = bad_root(tmp_path, kind)
    before = sorted(os.listdir(tmp_path))
    assert simulate_imagenet.main([root, *TINY]) == 2
    line = one_line(capsys.readouterr().err, "simulate_imagenet.py")
    assert f"ROOT {root}" in line and says in line
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


@pytest.mark.parametrize("argv,says", [
    (["--files", "-5"], "--files -5: give 1 to"), (["--files", str(10 ** 18)], "--files 1000"),
    (["--classes", "0"], "--classes 0"), (["--files", "10", "--classes", "11"], "--classes 11"),
    (["--files", "10000000", "--pool", "1"], "--pool 1: give at least"),
    (["--pool", str(10 ** 18)], "--pool 1000"), (["--shards", "-1"], "--shards -1"),
    (["--shard_members", "0"], "--shard_members 0"), (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2 ** 64)], "--seed 1844"), (["--files", "x"], "--files: invalid int")])
def test_simulate_refuses_a_bad_number(tmp_path, capsys, argv, says):
    """Before: argparse's usage line too (two lines), and negative seeds, 10**18 files or pool
    images (a list of that size, then days of work) were taken."""
    with pytest.raises(SystemExit) as stop:
        simulate_imagenet.main([str(tmp_path / "root"), *TINY, *argv])
    assert stop.value.code == 2
    assert says in one_line(capsys.readouterr().err, "simulate_imagenet.py")
    assert not os.path.exists(tmp_path / "root")


def test_simulate_refuses_more_than_the_disk_holds(tmp_path, capsys):
    """10^10 shard members (~1 PB): refused before anything is written. Before: the tree was
    built, then shards were written until the disk was full."""
    root = tmp_path / "root"
    assert simulate_imagenet.main([str(root), *TINY, "--shards", "100000",
                                   "--shard_members", "100000"]) == 1
    line = one_line(capsys.readouterr().err, "simulate_imagenet.py")
    assert "GiB is free" in line and "--shards" in line
    assert not os.path.exists(root)


SIMULATE_OPTIONS = ("--files", "--classes", "--pool", "--shards", "--shard_members", "--seed",
                    "--nope")
ODD = st.sampled_from(["", " 7 ", "1_0", "+3", "-0", "0x10", "１２", "1e3", "nan", "-",
                       "--files", "\udcff", "\0"])
VALUES = st.one_of(st.integers(-10 ** 20, 10 ** 20).map(str),
                   st.sampled_from([10 ** 18, -1, 0, 1, 2 ** 63, 65000]).map(str), ODD,
                   st.text(max_size=5))
PATH_TEXT = st.text(st.characters(blacklist_characters="/"), max_size=6)


def check_parse(parse, argv: list[str], capsys):
    """``parse(argv)``: the namespace, or None after asserting exit status 2 and one line
    naming an option."""
    capsys.readouterr()
    try:
        return parse(argv)
    except SystemExit as stop:
        assert stop.code == 2
        line = one_line(capsys.readouterr().err, parse.__module__.rsplit(".", 1)[-1] + ".py")
        assert NAMES_AN_OPTION.search(line) or "unrecognized arguments" in line, line
        return None


def odd_files(tree: str | None = None) -> None:
    """A file and a FIFO in the current folder (and a link to ``tree``), made once per test."""
    if not os.path.exists("file"):
        open("file", "w").close()
        os.mkfifo("fifo")
        if tree:
            os.symlink(tree, "tree")


def parsed(script, argv: list[str], capsys):
    """``check_parse`` of the script's parse_args; each number of the namespace asserted within
    the script's LIMITS."""
    args = check_parse(script.parse_args, argv, capsys)
    for name, (least, most) in script.LIMITS.items() if args is not None else ():
        assert least <= getattr(args, name) <= most
    return args


@settings(max_examples=40)
@given(root=st.one_of(st.sampled_from(["new", "file", "fifo", "file/sub", "", "a\0b", "\ud800",
                                       ".."]), PATH_TEXT),
       pairs=st.lists(st.tuples(st.sampled_from(SIMULATE_OPTIONS), VALUES), max_size=4),
       dangling=st.booleans())
def test_simulate_arguments_property(tmp_path, capsys, monkeypatch, root, pairs, dangling):
    """Any command line: exit status 2 with one line naming an option or ROOT, or numbers
    within their limits and a ROOT check that answers (in words, nothing written), never
    another exception. Before: two-line usage errors, negative or huge numbers taken."""
    monkeypatch.chdir(tmp_path)
    odd_files()
    argv = [root] + [a for pair in pairs for a in pair] + (["--pool"] if dangling else [])
    args = parsed(simulate_imagenet, argv, capsys)
    if args is None:
        return
    assert args.classes <= args.files <= args.pool * simulate_imagenet.MAX_LINKS
    before = sorted(os.listdir("."))
    problem = simulate_imagenet.check_root(args)
    assert problem is None or (problem.startswith("ROOT ") and "\n" not in problem)
    assert sorted(os.listdir(".")) == before


def test_simulate_stops_cleanly_on_a_group_signal(tmp_path):
    """SIGUSR1 to the process group while it links: exit status 130, one line, whole classes
    only under ROOT/train, no temporary left. Already so before (save the line's wording)."""
    root = tmp_path / "root"
    process = subprocess.Popen([*SIMULATE, str(root), "--files", "200000",
                                "--classes", "200", "--pool", "4"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for(lambda: os.path.exists(root / "train") or process.poll() is not None)
    status, err, left = stopped(process, "group", signal.SIGUSR1)
    assert status == 130 and not left, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "simulate_imagenet.py: stopped by SIGUSR1")
    assert all(len(os.listdir(root / "train" / c)) == 1000 for c in os.listdir(root / "train"))
    assert not [n for _, _, names in os.walk(root) for n in names if n.endswith(".tmp")]
    assert not json.loads((root / "simulated.json").read_text())["complete"]


def test_simulate_refuses_a_root_another_run_builds(tmp_path):
    """While a run holds ROOT's lock (here this test process), another is refused in one line and
    leaves the class being built alone. Before: its start deleted that class (ROOT/.building), and
    the first run ended "complete" with a class short of files."""
    root = tmp_path / "root"
    building = root / simulate_imagenet.BUILDING / "n01440764"
    building.mkdir(parents=True)
    with runfolder.RunLock(str(root), "the first run") as lock:
        lock.acquire()
        done = subprocess.run([*SIMULATE, str(root), *TINY], cwd=ROOT, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr, "simulate_imagenet.py")
    assert f"ROOT {root} is in use by process {os.getpid()}" in line and "another ROOT" in line
    assert sorted(os.listdir(root)) == [simulate_imagenet.BUILDING] and building.is_dir()


# ----------------------------------------------------------------------------------------
# measure_loading
# ----------------------------------------------------------------------------------------
def folder_of(tmp_path, kind: str, tree: str) -> list[str]:
    """Arguments naming a bad FOLDER or --cache of the given kind."""
    t = str(tmp_path)
    if kind in ("file", "fifo"):
        (open(f"{t}/{kind}", "w").close() if kind == "file" else os.mkfifo(f"{t}/{kind}"))
        return [f"{t}/{kind}"]
    if kind == "empty":
        os.mkdir(f"{t}/empty")
        return [f"{t}/empty", "--parts", "throughput"]
    if kind == "no images":
        os.mkdir(f"{t}/text")
        open(f"{t}/text/a.txt", "w").close()
        return [f"{t}/text"]
    if kind == "undecodable":
        os.mkdir(f"{t}/bad")
        for i in range(3):
            with open(f"{t}/bad/{i}.jpg", "w") as f:
                f.write("not a JPEG")
        return [f"{t}/bad"]
    if kind == "cache folder":
        return [tree, "--cache", t]
    if kind == "cache fifo":
        os.mkfifo(f"{t}/list.npz")
        return [tree, "--cache", f"{t}/list.npz"]
    if kind == "cache in no folder":
        return [tree, "--cache", f"{t}/missing/list.npz"]
    if kind == "cache unwritable":
        os.mkdir(f"{t}/ro", 0o500)
        return [tree, "--cache", f"{t}/ro/list.npz" if not os.access(f"{t}/ro", os.W_OK)
                else "/sys/kernel/ipt-test-list.npz"]
    return {"missing": [f"{t}/missing"], "too many workers": [tree, "--workers", "21"],
            "crops too large": [tree, "--patch_size", "126"]}[kind]


@pytest.mark.parametrize("kind,status,says", [
    ("missing", 2, "does not exist"), ("file", 2, "is a file"), ("fifo", 2, "is a named pipe"),
    ("empty", 1, "no images"), ("no images", 1, "no images"),
    ("undecodable", 1, "could be decoded"), ("cache folder", 2, "--cache"),
    ("cache fifo", 2, "--cache"), ("cache in no folder", 2, "folder does not exist"),
    ("cache unwritable", 2, "cannot be written"), ("too many workers", 2, "--workers 21"),
    ("crops too large", 2, "--patch_size 126")])
def test_measure_refuses_a_bad_folder_or_cache(tmp_path, capsys, tree, kind, status, says):
    """One line, before any row's process is started. Before: a row's process failed with its
    traceback relayed (empty or undecodable folder, a folder as --cache, too many workers),
    the throughput part raised in-process, a pipe as --cache was replaced by a file, and crops
    larger than every image made the stream read a whole epoch (at ImageNet's size: hours)."""
    argv = folder_of(tmp_path, kind, tree)
    start = time.monotonic()
    assert measure_loading.main([*QUICK, *argv]) == status
    line = one_line(capsys.readouterr().err, "measure_loading.py")
    assert says in line
    assert time.monotonic() - start < 2  # no row's process was started (one takes ~3 s)
    if kind == "cache fifo":
        assert os.path.exists(argv[-1]) and not os.path.isfile(argv[-1])


@pytest.mark.parametrize("argv,says", [
    (["--workers", "0"], "--workers 0"), (["--workers", "-1"], "--workers -1"),
    (["--workers", str(10 ** 18)], "--workers 1000"), (["--batch_size", "0"], "--batch_size 0"),
    (["--batch_size", str(10 ** 18)], "--batch_size 1000"), (["--patch_size", "-48"], "-48"),
    (["--batch_size", "1024", "--patch_size", "256"], "pixels"), (["--steps", "0"], "--steps 0"),
    (["--steps", str(10 ** 18)], "--steps 1000"), (["--throughput_batches", "0"], "batches 0"),
    (["--parts", "startup,memory"], "'memory' is not a part"), (["--parts", ""], "'' is not"),
    (["--workers", "two"], "--workers: invalid int")])
def test_measure_refuses_a_bad_number_or_part(tmp_path, capsys, argv, says):
    """Before: two lines (usage too) for argparse's errors; 0 throughput batches divided by
    zero, 0 workers failed in the row's process, 10**18 steps or workers were taken."""
    with pytest.raises(SystemExit) as stop:
        measure_loading.main([str(tmp_path), *argv])
    assert stop.value.code == 2
    assert says in one_line(capsys.readouterr().err, "measure_loading.py")


MEASURE_OPTIONS = ("--workers", "--batch_size", "--patch_size", "--steps", "--throughput_batches",
                   "--parts", "--cache", "--nope")


@settings(max_examples=40)
@given(folder=st.one_of(st.sampled_from(["tree", "missing", "file", "fifo", "", "a\0b", "\ud800",
                                         "."]), PATH_TEXT),
       pairs=st.lists(st.tuples(st.sampled_from(MEASURE_OPTIONS),
                                st.one_of(VALUES, st.sampled_from(
                                    ["startup", "throughput", "throughput,startup", "fifo",
                                     "file", "tree", "startup,"]))), max_size=4),
       dangling=st.booleans())
def test_measure_arguments_property(tmp_path, capsys, monkeypatch, tree, folder, pairs, dangling):
    """Any command line: exit status 2 with one line naming an option or FOLDER, or numbers and
    parts within their limits and path checks that answer in words, never another exception.
    Before: two-line usage errors, zero, negative or huge numbers and empty parts taken."""
    monkeypatch.chdir(tmp_path)
    odd_files(tree)
    argv = [folder] + [a for pair in pairs for a in pair] + (["--steps"] if dangling else [])
    args = parsed(measure_loading, argv, capsys)
    if args is None:
        return
    assert args.parts and set(args.parts) <= set(measure_loading.PARTS)
    problem = measure_loading.check_paths(args)
    assert problem is None or (re.match(r"FOLDER |--cache |--parts ", problem)
                               and "\n" not in problem)
    assert not os.path.exists("fifo") or not os.path.isfile("fifo")


def test_measure_throughput_skips_and_counts_each_file_once(tmp_path, capsys, monkeypatch):
    """The decode row counts the files decoded: 3 (one of 4 is broken), not batches x batch
    size (before: 4 counted, and the broken file raised ImageReadError)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (200, 200), (i, 50, 90)).save(folder / f"{i}.png")
    (folder / "3.png").write_text("broken")
    rows = []
    monkeypatch.setattr(measure_loading, "rate_line",
                        lambda what, pairs, seconds: rows.append((what, pairs)) or f"| {what} |")
    assert measure_loading.main([str(folder), "--parts", "throughput", "--batch_size", "2",
                                 "--throughput_batches", "2", "--patch_size", "8"]) == 0
    assert rows[-1] == ("(reading and decoding the JPEG alone)", 3)
    assert rows[0] == ("sr2", 4)
    assert f"measured: {folder}," in capsys.readouterr().out


def test_measure_startup_needs_the_listing_cached(tmp_path, capsys, monkeypatch, tree):
    """A folder changed just now is not cached by the stream, so the "from the cache" row would
    walk it: refused in one line, no row's process started (before: a table with a row that
    silently was not from the cache). Unchanged for an hour, the table has its three rows."""
    fresh = tmp_path / "fresh"
    os.symlink(tree, tmp_path / "link")
    assert simulate_imagenet.main([str(fresh), *TINY]) == 0
    capsys.readouterr()
    assert measure_loading.main([str(fresh / "train"), "--parts", "startup", *QUICK]) == 1
    assert "was not cached" in one_line(capsys.readouterr().err, "measure_loading.py")
    cache = tmp_path / "list.npz"
    monkeypatch.chdir(tmp_path)
    assert measure_loading.main(["link", "--parts", "startup", "--cache", str(cache), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "measured: link," in out and out.count("| compact index, from the cache |") == 3
    assert cache.is_file()


@pytest.fixture(scope="module")
def measuring(tree, tmp_path_factory) -> dict:
    """The runs of the two tests below, started together (each takes seconds to import torch and
    start its processes), each in its own session: {"process"/"group": a start-up measurement of
    MAX_STEPS steps, "failing": a row's process on a folder without images}."""
    empty = tmp_path_factory.mktemp("no_images")
    (empty / "a.txt").write_text("no image")
    commands = {how: [*MEASURE, tree, "--parts", "startup", "--steps", str(measure_loading.MAX_STEPS),
                      "--workers", "1"] for how in ("process", "group")}
    commands["failing"] = [*MEASURE, str(empty), "--child", "list", "--cache", str(empty / "list.npz"),
                           "--workers", "1", "--steps", "2"]
    runs = {name: subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True) for name, command in commands.items()}
    yield runs
    for process in runs.values():  # what a failed test left
        for pid in session(process.pid):
            os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize("how,sig", [("process", signal.SIGTERM), ("group", signal.SIGINT)])
def test_measure_stops_cleanly(measuring, how, sig):
    """A stop while a row's process runs its loader worker: exit status 130, one line, and the
    row's process and its worker gone. Before: SIGTERM killed the parent alone (its row's
    process and worker ran on, up to 30 minutes); SIGINT to the group printed tracebacks."""
    process = measuring[how]
    wait_for(lambda: len(session(process.pid)) >= 3 or process.poll() is not None)
    status, err, left = stopped(process, how, sig)
    assert status == 130 and not left, (err, left)
    line = one_line(err, "measure_loading.py")
    assert f"stopped by {signal.Signals(sig).name}" in line


def test_measure_a_failing_row_process_ends(measuring):
    """A row's process whose loader worker fails (no image to read) ends with one line. Before:
    it printed a traceback and then waited forever at exit for its worker, which ignores the
    SIGTERM multiprocessing ends workers with (its parent, and `timeout`, waited too)."""
    process = measuring["failing"]
    _, err = process.communicate(timeout=PROBE_TIMEOUT_S)
    assert process.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("measure_loading.py: ") and "cannot feed 1 loader workers" in last
    assert "Traceback" not in err
