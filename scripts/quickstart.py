"""The quickstart journey: pre-train a tiny IPT on six tasks, fine-tune SR x2, evaluate.

    python -m scripts.quickstart [--out experiment/quickstart] [--pretrain_steps N]
                                 [--finetune_steps N] [--threads N] [--resume]

Options shared by the phases are in configs/quickstart.yaml. Ctrl-C (or SIGTERM, SIGUSR1) stops
the whole quickstart at any moment, in a phase or between two (exit status 130, a training phase
saves its state first); --resume then skips the finished phases and continues the interrupted one.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass

import stops  # loads no torch

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import checkpointing  # noqa: E402
import main as ipt_main  # noqa: E402
import records  # noqa: E402
import utility  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from scripts.cli import REPOSITORY, check_limits, check_paths  # noqa: E402
from stops import INTERRUPTED  # noqa: E402  (130: a run stopped by a signal, state saved)

CONFIG = os.path.join(REPOSITORY, "configs", "quickstart.yaml")
OUT = os.path.join("experiment", "quickstart")
PRETRAIN_STEPS = 1500
FINETUNE_STEPS = 1500
LIMITS = {"pretrain_steps": (1, utility.MAX_COUNT), "finetune_steps": (1, utility.MAX_COUNT),
          "threads": (0, utility.MAX_LOADER_WORKERS)}  # main.py's bounds of --max_steps and --threads
LATEST = os.path.join("model", "model_latest.pt")  # the next phase reads this one
# trained weights as a torch file and as .safetensors (no code inside; spandrel, chaiNNer, ComfyUI)
SAVE_FORMAT = ["--save_format", "both"]
STATE = "state.pt"
REPORTS = ("metrics.json", "results.md")
ALL_SCALES = "2+3+4+1+1+1"
# Evaluation work, in units of one network pass over the test photos at full size: a head at
# scale s costs 1/s^2 of that plus about half a unit at full size (bicubic baseline, metrics,
# saved images, comparison sheets). In a tiny quickstart on a loaded 2-core machine this put the
# six heads at 8.6x sr2 alone (measured: 9.6x), and a unit took about 20 training steps' time,
# the guess used until an evaluation is measured.
STEPS_PER_EVAL_UNIT = 20
BUSY_CORES = 0.5  # other processes keeping this many cores busy make the machine a busy one
BUSY_SAMPLE_S = 0.5  # how long the quickstart watches the CPU before it starts
PAUSE_ENV = "IPT_QUICKSTART_PAUSE_S"  # tests: seconds to wait between phases (to signal there)
PRETRAIN, FINETUNE, EVALUATE_FINETUNED, EVALUATE_PRETRAINED = range(4)  # the phases, in order


@dataclass(frozen=True)
class Phase:
    """One call of main.py: a training run (steps > 0) or an evaluation (steps 0)."""

    title: str
    save: str  # its run directory
    options: list[str]  # its main.py options, less --save, --pretrain, --reset and --resume
    source: str = ""  # the checkpoint it starts from or evaluates ("": none)
    steps: int = 0
    units: float = 0.0  # evaluation work (see STEPS_PER_EVAL_UNIT)


def eval_units(scales: str) -> float:
    """The evaluation work of heads at these scales ("2+3+4+1+1+1")."""
    return sum(0.5 + 1 / int(s) ** 2 for s in scales.split("+"))


def phases(out: str, pretrain_steps: int, finetune_steps: int) -> list[Phase]:
    """The four phases, in order."""
    pre, fine = os.path.join(out, "pretrain"), os.path.join(out, "finetune_sr2")
    return [
        Phase("pre-train six tasks", pre, ["--scale", ALL_SCALES, "--max_steps", str(pretrain_steps),
                                           *SAVE_FORMAT], steps=pretrain_steps),
        Phase("fine-tune sr2", fine, ["--task", "sr2", "--max_steps", str(finetune_steps), *SAVE_FORMAT],
              os.path.join(pre, LATEST), steps=finetune_steps),
        Phase("evaluate sr2 (fine-tuned)", os.path.join(out, "eval_sr2"),
              ["--test_only", "--task", "sr2", "--save_results"], os.path.join(fine, LATEST),
              units=eval_units("2")),
        Phase("evaluate every head (pre-trained)", os.path.join(out, "eval_pretrained"),
              ["--test_only", "--scale", ALL_SCALES, "--save_results"], os.path.join(pre, LATEST),
              units=eval_units(ALL_SCALES)),
    ]


# ---- What is done already (--resume) -----------------------------------------------------
def training_record(p: Phase) -> dict:
    """Phase p's RUN/model/training.json ({} when it is missing or unreadable: not started / unknown)."""
    return records.read_training_record(os.path.join(p.save, LATEST)) or {}


def steps_done(p: Phase) -> int:
    """The steps phase p's training run has taken, 0 if unknown."""
    step = training_record(p).get("step")
    return step if isinstance(step, int) else 0


def fresh(path: str, since: str) -> bool:
    """Whether path exists and is not older than the file since ("": no such condition)."""
    try:
        return not since or os.path.getmtime(path) >= os.path.getmtime(since)
    except OSError:
        return False


def mode(plan: list[Phase], i: int, resume: bool) -> str:
    """With --resume, "skip" when phase i finished and "resume" when its training was interrupted,
    after the phase whose checkpoint it reads was done; else "run" (afresh)."""
    p = plan[i]
    producer = next((j for j, q in enumerate(plan) if os.path.join(q.save, LATEST) == p.source), None)
    if not resume or (producer is not None and mode(plan, producer, resume) != "skip"):
        return "run"
    if not p.steps:
        return "skip" if all(fresh(os.path.join(p.save, name), p.source) for name in REPORTS) else "run"
    r = training_record(p)
    if r.get("max_steps") != p.steps:
        return "run"
    if r.get("finished") is True and fresh(os.path.join(p.save, LATEST), p.source):
        return "skip"
    return "resume" if r.get("finished") is False and fresh(os.path.join(p.save, STATE), p.source) else "run"


def arguments(p: Phase, how: str, threads: int = 0) -> list[str]:
    """main.py's arguments for phase p run afresh ("run") or continued ("resume"), on
    ``threads`` compute threads (0: main.py's choice)."""
    args = ["--config", CONFIG, *p.options, "--save", p.save]
    args += ["--threads", str(threads)] if threads else []
    if how == "resume":  # the weights come from RUN/state.pt; a fine-tune's model options from
        # --pretrain's record, as when it started (--auto_resume loads those weights only afresh)
        return [*args, "--pretrain", p.source, "--auto_resume"] if p.source else [*args, "--resume"]
    if p.source:
        args += ["--pretrain", p.source]
    return [*args, "--reset"] if p.steps else args


# ---- Time --------------------------------------------------------------------------------
@dataclass
class Clock:
    """This invocation's start and the speed it measured: training steps and evaluation units."""

    start: float
    train_s: float = 0.0
    train_steps: int = 0
    eval_s: float = 0.0
    eval_units: float = 0.0

    def per_step(self) -> float | None:
        """Seconds per training step, None before one was measured."""
        return self.train_s / self.train_steps if self.train_steps else None

    def per_unit(self) -> float | None:
        """Seconds per evaluation unit: measured, else guessed from the training speed."""
        if self.eval_units:
            return self.eval_s / self.eval_units
        step = self.per_step()
        return None if step is None else STEPS_PER_EVAL_UNIT * step


def duration(seconds: float) -> str:
    """45 s, 12.3 min or 1 h 53 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def time_left(plan: list[Phase], first: int, resume: bool, clock: Clock) -> float | None:
    """Estimated seconds for phases first.. (those to run), None before the speeds are known."""
    steps = units = 0.0
    for i in range(first, len(plan)):
        how = mode(plan, i, resume)
        if how != "skip":
            steps += plan[i].steps - (steps_done(plan[i]) if how == "resume" else 0)
            units += plan[i].units
    per_step, per_unit = clock.per_step(), clock.per_unit()
    if (steps and per_step is None) or (units and per_unit is None):
        return None
    return steps * (per_step or 0.0) + units * (per_unit or 0.0)


def headline(plan: list[Phase], i: int, resume: bool, clock: Clock) -> str:
    """phase k/4: title, what it does, the elapsed time and the time left."""
    p, how = plan[i], mode(plan, i, resume)
    head = f"phase {i + 1}/{len(plan)}: {p.title}"
    if how == "skip":
        return f"{head}: done before, skipped"
    left = time_left(plan, i, resume, clock)
    eta = "estimating time left" if left is None else f"about {duration(left)} left"
    doing = f", continuing at step {steps_done(p)} of {p.steps}" if how == "resume" else ""
    return f"{head}{doing} (elapsed {duration(time.time() - clock.start)}, {eta})"


def busy_cores(seconds: float = BUSY_SAMPLE_S) -> float:
    """How many cores other processes keep busy now: /proc/stat over a moment (Linux; this
    process is idle meanwhile), else the 1-minute load average."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        (total0, idle0), _, (total1, idle1) = snapshot(), time.sleep(seconds), snapshot()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    return (1 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or 1)


def compute_threads(requested: int) -> int:
    """--threads for the phase about to start: the one asked for, else 0 (main.py fits them to
    the cores) unless other jobs are busy now, then the cores they leave (at least 1), said in a
    line: torch's threads spin-wait for each other on busy cores, several times slower. Looked at
    before each phase: a short job beside the first must not slow the others."""
    if requested:
        return requested
    cores, busy = utility.usable_cpus(), busy_cores()
    if busy < BUSY_CORES:
        return 0
    threads = max(1, cores - round(busy))
    print(f"quickstart: other jobs keep {busy:.1f} of {cores} usable core(s) busy, so this phase "
          f"computes on {threads} thread(s) (--threads N to choose)", flush=True)
    return threads


# ---- The journey -------------------------------------------------------------------------
def resume_command(a: argparse.Namespace) -> str:
    """The command that continues this quickstart."""
    words = ["python", "-m", "scripts.quickstart", "--resume"]
    for name, default in (("out", OUT), ("pretrain_steps", PRETRAIN_STEPS),
                          ("finetune_steps", FINETUNE_STEPS), ("threads", 0)):
        value = str(getattr(a, name))
        if os.path.normpath(value) != os.path.normpath(str(default)):  # --out ./experiment/quickstart too
            words += [f"--{name}", value]
    return " ".join(shlex.quote(w) for w in words)


def call_main(args: list[str]) -> int:
    """main.main(args)'s exit status; Ctrl-C (KeyboardInterrupt) counts as an interruption."""
    try:
        return ipt_main.main(args)
    except KeyboardInterrupt:
        return INTERRUPTED
    except SystemExit as e:  # an argparse error: 2
        return e.code if isinstance(e.code, int) else 1


def pause_between_phases() -> None:
    """Wait PAUSE_ENV seconds when set (tests send a signal then), saying so."""
    try:
        seconds = float(os.environ.get(PAUSE_ENV) or 0)
    except ValueError:
        seconds = 0.0
    if seconds > 0:
        print(f"quickstart: pausing {seconds:g} s between phases ({PAUSE_ENV})", flush=True)
        time.sleep(seconds)


class Journey:
    """The phases of one quickstart, each run, continued or skipped (--resume) in turn."""

    def __init__(self, a: argparse.Namespace, clock: Clock, stop: stops.StopSignals):
        self.a, self.clock, self.stop = a, clock, stop
        self.plan, self.ran = phases(a.out, a.pretrain_steps, a.finetune_steps), {}

    def phase(self, i: int) -> int:
        """Phase i run, continued or skipped; 0 to go on, else the exit status that ends the
        journey: the phase's failure, or 130 at a stop signal (``stop.received``, or the phase's
        exit status 130)."""
        plan, resume, where = self.plan, self.a.resume, f"phase {i + 1}/{len(self.plan)}"
        if self.stop.received is not None:  # raised where Python swallows it (a finaliser)
            return self.stopped(f"between phases, before {where}")
        print(f"\n{headline(plan, i, resume, self.clock)}", flush=True)
        p, how = plan[i], mode(plan, i, resume)
        if how == "skip":
            return 0
        code = self.run(p, i, how)
        if code == INTERRUPTED or self.stop.received is not None:
            return self.stopped(f"in {where} ({p.title})")
        if code != 0:
            print(f"quickstart: {where} ({p.title}) failed (exit status {code}); once its cause "
                  f"is fixed, continue with:\n  {resume_command(self.a)}", file=sys.stderr)
            return code
        if i + 1 < len(plan):
            pause_between_phases()
        return 0

    def run(self, p: Phase, i: int, how: str) -> int:
        """Run phase p (the i-th), timing it into the clock; its exit status."""
        clock, began = self.clock, time.time()
        before = steps_done(p) if how == "resume" else 0
        code = call_main(arguments(p, how, compute_threads(self.a.threads)))
        took = time.time() - began
        if not p.steps:
            self.ran[i] = None
            if code == 0:
                clock.eval_s, clock.eval_units = clock.eval_s + took, clock.eval_units + p.units
            return code
        self.ran[i] = ran = max(steps_done(p) - before, 0)
        if ran:
            clock.train_s, clock.train_steps = clock.train_s + took, clock.train_steps + ran
        return code

    def stopped(self, where: str, signum: int | None = None) -> int:
        """Say how to continue after a stop signal (a later one is only recorded); 130."""
        self.stop.raise_ = False
        signum = self.stop.received or signum
        by = f" by {stops.signal_name(signum)}" if signum else ""
        print(f"\nquickstart: stopped{by} {where} after {duration(time.time() - self.clock.start)}; "
              f"continue with:\n  {resume_command(self.a)}", file=sys.stderr, flush=True)
        return INTERRUPTED

    def done(self) -> int:
        """The total time, the steps of each training phase and where the tables are; 0."""
        lines = [f"quickstart done: {duration(time.time() - self.clock.start)} in this session"]
        for i, p in enumerate(self.plan):
            head = f"  phase {i + 1}/{len(self.plan)} {p.title}:"
            if p.steps:
                r = training_record(p)
                now = f"{self.ran[i]} in this session" if self.ran.get(i) is not None else "done before"
                lines.append(f"{head} {r.get('step', '?')}/{r.get('max_steps', p.steps)} steps ({now}), "
                             f"{os.path.join(p.save, LATEST)}")
            else:
                done = "" if i in self.ran else " (done before)"
                lines.append(f"{head} table {os.path.join(p.save, 'results.md')}{done}")
        print("\n" + "\n".join(lines), flush=True)
        return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The quickstart's own options."""
    p = OptionParser(prog="quickstart.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT, help="where the four phases write their runs")
    p.add_argument("--pretrain_steps", type=int, default=PRETRAIN_STEPS)
    p.add_argument("--finetune_steps", type=int, default=FINETUNE_STEPS)
    p.add_argument("--threads", type=int, default=0,
                   help="compute threads of every phase (0: fewer when other jobs load the CPU)")
    p.add_argument("--resume", action="store_true",
                   help="skip the finished phases and continue the interrupted one")
    a = p.parse_args(argv)
    check_limits(p, a, LIMITS)
    check_paths(p, a, ["out"])
    return a


def main(argv: list[str] | None = None) -> int:
    """The quickstart's exit status: 0 done, 130 stopped by a signal, else the failed phase's.

    The four phases run in order (with --resume, those done skipped); the first that does not end
    with 0 ends the journey with its exit status. SIGINT, SIGTERM and SIGUSR1 are handled for the
    whole journey; a phase's main.main puts its own handlers in place while it trains or evaluates
    and returns 130 when they stopped it."""
    a = parse_args(argv)
    hook = sys.unraisablehook  # a stop sets stops.quiet_unraisable: the journey's end puts this back
    # a stopped phase's own advice (its main.py command and --resume) would contradict the
    # quickstart's one stop line, which says how to continue the whole journey
    logger = logging.getLogger("ipt")
    logger.addFilter(not_the_phase_resume_hint)
    try:
        with stops.StopSignals(raise_=True) as stop:
            run = Journey(a, Clock(time.time()), stop)
            try:
                return (run.phase(PRETRAIN) or run.phase(FINETUNE) or run.phase(EVALUATE_FINETUNED)
                        or run.phase(EVALUATE_PRETRAINED) or run.done())
            except KeyboardInterrupt as e:  # outside a phase (Ctrl-C or a stop signal)
                return run.stopped("between phases", getattr(e, "signum", None))
    finally:
        sys.unraisablehook = hook
        logger.removeFilter(not_the_phase_resume_hint)


def not_the_phase_resume_hint(record: logging.LogRecord) -> bool:
    """A logging filter: every record but a phase's own "continue with --resume" line."""
    return record.msg != checkpointing.RESUME_HINT


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
