"""Shared test helpers: the authors' fixtures and tiny models."""
from __future__ import annotations

import gc
import os
import random
import sys
import tempfile

# the collector off while torch loads and the tests are collected, as main.py starts: seconds
# sooner per worker; pytest_collection_finish turns it on with utility.collect_again
gc.disable()

import numpy as np  # noqa: E402

# Hypothesis keeps caches (and would keep its example database) in a folder it creates: outside
# the repository, so a test run leaves the working tree as it found it
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      os.path.join(tempfile.gettempdir(), "ipt-tests-hypothesis"))

# pytest -n N: N workers share the cores, so each computes on one thread, and so do the programs
# the tests start (main.py reads OMP_NUM_THREADS): threads spin-waiting for a busy core cost more
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property-based tests (Hypothesis): the same examples on every run and machine (derandomized),
# no example database written into the tree, no per-example deadline (torch's first calls are
# slow); each test states its own max_examples.
settings.register_profile("ipt", derandomize=True, database=None, deadline=None, print_blob=False,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile("ipt")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def pytest_collection_finish(session) -> None:
    import utility
    utility.collect_again()

from model import IPT, IPTConfig  # noqa: E402

TINY = dict(n_feats=16, num_heads=4, num_layers=2)
# Largest difference allowed between the tiny IPT's outputs (about -200..400) computed with other
# kernels: the fixture's CPU, another batch size or tile grouping here. Float sums taken in
# another order moved them by up to 2.4e-3 on this machine under other kernels
# (ATEN_CPU_CAPABILITY=default/avx2, MKL_ENABLE_INSTRUCTIONS=AVX2/SSE4_2); 1e-2 leaves 4x room and
# is still far below what a wrong weight, key or tile does (1 and more).
FIXTURE_ATOL = 1e-2
TEST_SEED = 0


@pytest.fixture(autouse=True)
def seeded_random():
    """Every test starts from the same random state: its random inputs are the same on every run."""
    torch.manual_seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    random.seed(TEST_SEED)


@pytest.fixture
def crop_sample(monkeypatch):
    """crop_sample(height, width[, coffee's height, width]): the Sample set's photos (astronaut,
    coffee) cut to that size for this test, which is of a run, not of speed."""
    import data.benchmark
    real = data.benchmark.sample_photo

    def crop(*sizes: int) -> None:
        side = {"astronaut": sizes[:2], "coffee": sizes[2:] or sizes[:2]}
        monkeypatch.setattr(data.benchmark, "sample_photo",
                            lambda name: real(name)[:, :side[name][0], :side[name][1]])
    return crop


@pytest.fixture(scope="session")
def authors_model() -> dict:
    """The fixture made with the authors' code: config and state_dict."""
    return torch.load(os.path.join(FIXTURES, "official_ipt_tiny.pt"), weights_only=True)


@pytest.fixture(scope="session")
def authors_io() -> dict:
    """Inputs and the authors' outputs for the fixture model."""
    return torch.load(os.path.join(FIXTURES, "official_ipt_tiny_io.pt"), weights_only=True)


def config_from(raw: dict, **overrides) -> IPTConfig:
    """An IPTConfig from the fixture's config dict."""
    known = {k: v for k, v in raw.items() if k in IPTConfig.__dataclass_fields__}
    return IPTConfig(**{**known, **overrides})


@pytest.fixture(scope="session")
def tiny_model(authors_model) -> IPT:
    """The six-task fixture model with the authors' weights, in eval mode."""
    model = IPT(config_from(authors_model["config"])).eval()
    model.load_state_dict(authors_model["state_dict"])
    return model


class TileCounter:
    """Counts the 48x48 inputs that go through a model."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs) -> None:
        self.count += inputs[0].shape[0]

    def close(self) -> None:
        self._handle.remove()


DEV_FULL = "/dev/full"  # every write to it fails with ENOSPC: a full disk, without filling one


def dev_full() -> str:
    """/dev/full; the test is skipped where there is no such device."""
    import stat
    if not (os.path.exists(DEV_FULL) and stat.S_ISCHR(os.stat(DEV_FULL).st_mode)):
        pytest.skip(f"no {DEV_FULL} to stand for a full disk")
    return DEV_FULL


def full_disk_for_safetensors(monkeypatch, after: int = 0) -> None:
    """The files model.checkpoint opens for writing (.safetensors), after the first ``after``,
    are /dev/full: their writes fail with ENOSPC as on a full disk. Skips where it is missing."""
    import builtins

    from model import checkpoint
    full, real_open, opened = dev_full(), builtins.open, []

    def open_full(file, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(file)
            if len(opened) > after:
                file = full
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(checkpoint, "open", open_full, raising=False)


def read_until(stream, wanted) -> None:
    """Read lines of ``stream`` up to the first for which ``wanted(line)`` holds; fail at its end."""
    seen = []
    for line in stream:
        if wanted(line):
            return
        seen.append(line)
    pytest.fail("the process ended before the awaited line: " + "".join(seen)[-2000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output as valid UTF-8 (undecodable names escaped): pytest -n sends every report to
    the main process as UTF-8, and a test of odd file names logs them as they are."""
    report = (yield).get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
