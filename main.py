"""IPT from the command line: parse the options, build the model, run the job.

This file only wires the parts: ``option`` parses and validates the options into typed settings,
``model`` builds and loads the network, ``data`` reads the training set, ``evaluation`` restores
and scores images (``--test_only``, and the validations during training), ``trainer`` trains.
"""
from __future__ import annotations

import gc
import sys

import stops  # loads no torch: a stop signal while torch loads is kept, not a silent kill

if __name__ == "__main__":
    gc.disable()  # during start-up, until utility.collect_again: it starts about a second sooner
    stops.early()

import option  # loads no torch, so that --help answers at once  # noqa: E402
import option_files  # noqa: E402
import run_settings  # noqa: E402
import utility  # noqa: E402

if __name__ == "__main__":
    if option.asks_for_help(sys.argv[1:]):
        option.build_parser().print_help()
        sys.exit(0)
    # a bad torchrun count or option: one line and exit 2, before torch loads
    for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)):
        utility.torchrun_count(name, default)
    ARGS = option.parse_args(sys.argv[1:])

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

import checkpointing  # noqa: E402
import distributed  # noqa: E402
import evaluation  # noqa: E402
import runfolder  # noqa: E402
import trainer  # noqa: E402
from data.benchmark import BenchmarkError  # noqa: E402
from data.images import DataLayoutError, ImageReadError  # noqa: E402
from model import CheckpointError, build_model, load_body, load_checkpoint  # noqa: E402

log = logging.getLogger("ipt")


class JobError(Exception):
    """Why the job cannot go on, in one line (exit status 1); empty when another rank says it."""


# the errors that end the job in their one line (exit status 1), each naming the file or set and the fix
ENDS_JOB = (JobError, distributed.JoinError, CheckpointError, checkpointing.StateError, BenchmarkError)


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Run the job the options describe (``args``: ``argv`` already parsed); the exit status (0
    ok, 1 failures, 2 bad options)."""
    world, rank = distributed.world_size(), distributed.rank()  # checked before anything is written
    args = args or option.parse_args(argv)
    s = option.settings(args)
    device = distributed.pick_device(s.run.cpu)
    utility.close_logging()  # set up again once the run directory is ours
    try:
        prepare_run_dir(s.run)
        with distributed.process_group(device, s.run.dist_timeout) if world > 1 else contextlib.nullcontext():
            return locked_run(args, s, device, argv, rank, world)
    except ENDS_JOB as e:  # every error that ends the job, said once
        if str(e) and log.handlers:  # the run's log is set up: it says it (log.txt, stderr)
            log.error("%s", e)
        elif str(e):
            print(f"main.py: error: {e}", file=sys.stderr)
        return 1


def locked_run(args: argparse.Namespace, s: run_settings.Settings, device: torch.device,
               argv: list[str] | None, rank: int, world: int) -> int:
    """The job, once rank 0 holds the run directory's lock (every rank learns whether it does)."""
    command = " ".join(sys.argv if argv is None else ["main.py", *argv])
    lock, stale, refused = runfolder.RunLock(s.run.save, command, stale_after=s.run.dist_timeout), None, None
    if rank == 0:  # the other ranks of a torchrun job write nothing there
        try:
            stale = lock.acquire()
        except runfolder.LockError as e:
            refused = str(e)
    if not distributed.all_agree(refused is None, device):  # a refusal ends every rank at once
        raise JobError(refused or "")
    with lock:
        utility.setup_logging(s.run.save, s.run.debug, quiet=rank > 0)
        log.info("command: %s", command)
        if stale:
            log.warning("%s", stale)
        if world > 1:  # torchrun's agent killed: its ranks stop as on SIGTERM, not train on as orphans
            stops.stop_when_orphaned(log)
        try:  # a stop signal in any phase: one line and exit 130 (training saves its state first)
            with stops.StopSignals(raise_=True, ignore_after=world > 1):
                return run(args, s, device)
        except KeyboardInterrupt as e:
            log.warning("%s received: stopped", stops.signal_name(stops.stop_signal(e)))
            return stops.INTERRUPTED


def run(args: argparse.Namespace, s: run_settings.Settings, device: torch.device) -> int:
    """The job itself, once the run directory is ours."""
    if device.type == "cpu" and utility.keep_freed_memory():
        log.debug("glibc malloc keeps freed blocks for reuse (fewer page faults per forward)")
    if args.architecture_from:
        log.info("model options from %s: %s", args.architecture_source, " ".join(args.architecture_from))
    for key in args.architecture_ignored:
        log.warning("%s: ignored its key %r (a record may only give the options that shape the "
                    "model)", args.architecture_source, key)
    if s.run.test_only and (given := option.training_options_given(args)):
        log.warning("training options have no effect with --test_only: %s", " ".join(given))
    if inert := option.inert_options_given(args):
        log.warning("options that have no effect here: %s", "; ".join(inert))
    torch.manual_seed(s.run.seed)
    if s.compile:
        check_compiler()
    try:
        if not s.run.test_only:
            return train(args, auto_resume(s), device)
        share_cpu(s.run.threads, 0, device)
        model, sha256 = prepare_model(s, device)
        net = torch.compile(model) if s.compile else model
        utility.collect_again()
        return evaluation.evaluate(net, s.evaluation, s.inference, s.run.checkpoint, sha256)
    except RuntimeError as e:  # torch.compile's errors come at the first call, deep inside
        dynamo = sys.modules.get("torch._dynamo")
        if s.compile and dynamo and isinstance(e, dynamo.exc.TorchDynamoException):
            cause = getattr(e, "inner_exception", None) or e  # a backend's own error, without dynamo's advice
            from torch._inductor.runtime.cache_dir_utils import cache_dir
            cache = cache_dir()
            fix = (f"a compile stopped midway (a stop signal, a kill) can leave a damaged file in torch's "
                   f"compile cache: remove {cache} and run again" if cache in str(cause)
                   else "run without --compile")
            raise JobError(f"--compile: torch.compile failed ({type(cause).__name__}: "
                           f"{utility.last_line(cause)[:300]}): {fix}") from None
        raise


def check_compiler() -> None:
    """JobError unless torch.compile can build here: its inductor needs a C++ compiler."""
    from torch._inductor import cpp_builder, exc
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise JobError("--compile needs a C++ compiler for torch's inductor (g++, or the one $CXX "
                       "names) and none was found: install one, or run without --compile") from None
    # on a machine without CUDA, inductor's C++ build warns that it found no CUDA runtime: moot on the CPU
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def auto_resume(s: run_settings.Settings) -> run_settings.Settings:
    """With --auto_resume and a state.pt in the run directory: the settings of --resume (its
    --pretrain and --init_from ignored, with a warning); otherwise the settings as they are."""
    state = os.path.join(s.run.save, utility.STATE_NAME)
    if not s.run.auto_resume or not os.path.lexists(state):
        if s.run.auto_resume:
            log.info("--auto_resume: no %s yet, starting afresh", state)
        return s
    if s.run.pretrain:
        log.warning("--auto_resume: continuing from %s; --pretrain %s is ignored (it only "
                    "starts a fresh run)", state, s.run.pretrain)
    return dataclasses.replace(s, run=dataclasses.replace(s.run, resume=-1, pretrain="", init_from=""))


def prepare_run_dir(r: run_settings.RunSettings) -> None:
    """Create --save if needed; JobError when it cannot be this run's directory."""
    where = f"--save {r.save}"
    if os.path.exists(r.save) and not os.path.isdir(r.save):
        raise JobError(f"{where} is a file, not a folder: give a run directory")
    if r.resume and not os.path.isdir(r.save):
        raise JobError(f"--resume: no run directory {r.save} to continue (check --save)")
    try:
        os.makedirs(r.save, exist_ok=True)
    except OSError as e:
        raise JobError(f"{where}: cannot write there ({e.strerror or e})") from None
    if why := runfolder.unwritable(r.save):
        raise JobError(f"{where}: cannot write there ({why})")


def prepare_model(s: run_settings.Settings, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """(the model of the options with its checkpoint loaded, on ``device``, in eval mode; the
    SHA-256 of the checkpoint bytes loaded, None without one); CheckpointError when it does not fit."""
    model = build_model(s.model)
    path, sha256 = s.run.checkpoint, None
    if path:
        sha256 = load_checkpoint(model, path, file_tasks=s.run.pretrain_tasks,
                                 argument=s.run.checkpoint_option)
        log.info("loaded %s", path)
    else:
        log.warning("no --pretrain given: the network has random weights")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, heads %s, %s parameters, on %s", type(model).__name__,
             "+".join(model.task_names), f"{n_params:,}", device)
    model = model.to(device).eval().requires_grad_(False)
    if s.run.precision == "bf16":  # the weights stay fp32: restore() autocasts the forward only
        log.info("--precision bf16: the network's forward under autocast (fp32 weights); tiling, "
                 "quantisation and metrics in fp32")
    return (model.half() if s.run.precision == "half" else model), sha256


# ---- Training ----
def train(args: argparse.Namespace, s: run_settings.Settings, device: torch.device) -> int:
    """Pre-train (several heads, no --task) or fine-tune (one head) as the options say. A rank
    that fails raises at once, skipping the closing barrier: its peers' collectives then fail."""
    rank, world = distributed.rank(), distributed.world_size()
    try:
        status = fit(make_trainer(args, s, device, rank, world))
        if status != 1:
            distributed.finish(world)
        return status
    except (torch.distributed.DistError, RuntimeError) as e:
        failure = distributed.peer_failure(e) if world > 1 and not isinstance(e, ENDS_JOB) else None
        if failure is None:
            raise
        if rank > 0:  # rank 0 says it
            raise JobError("") from None
        raise JobError(f"another process of this torchrun job failed or stopped answering "
                       f"({failure}): stopping; continue with --resume from the last saved state") from None


def make_trainer(args: argparse.Namespace, s: run_settings.Settings, device: torch.device, rank: int,
                 world: int) -> trainer.Trainer:
    """The Trainer of the options: its model (initialised or resumed), data and validation."""
    saved = previous_state(args, s.run)
    workers = share_cpu(s.run.threads, s.data.workers, device, world)
    s = dataclasses.replace(s, data=dataclasses.replace(s.data, workers=workers))
    model = build_model(s.model)
    if s.run.pretrain:
        initialise(model, s.run)
    model = model.to(device)
    if s.train.amp == "auto":  # bf16 where this device runs the network faster in it
        both = s.inference.precision == "auto"  # one measurement decides validation's precision too
        auto = evaluation.auto_precision(model, dataclasses.replace(s.inference, precision="auto"),
                                         option="--amp and --precision" if both else "--amp")
        s = dataclasses.replace(s, train=dataclasses.replace(s.train, amp="none" if auto.precision == "single"
                                                             else auto.precision),
                                inference=auto if both else s.inference)
    kept_workers, split_origin = trainer.resumed_split(saved, world)
    try:
        batches, steps_per_epoch, workers = trainer.make_batches(s.data, rank, world, kept_workers,
                                                                 split_origin)
    except (DataLayoutError, FileNotFoundError, ValueError) as e:
        raise JobError(f"--data_train {s.data.name}: {e}") from None
    # --epochs and the schedule's milestones count in the epoch the run started with
    epoch_steps = (saved or {}).get("epoch_steps", steps_per_epoch)
    total = s.total_steps or s.epochs * epoch_steps
    net = torch.compile(model) if s.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(model.task_names) > 1)  # other tasks' heads sit idle
    log.info("training %s (%s), %d steps of batch %d x %d micro-batch(es) x %d process(es), %d step(s) "
             "an epoch", "+".join(model.task_names),
             "pre-training" if len(model.task_names) > 1 else "fine-tuning",
             total, s.data.batch_size, s.data.accumulate, world, steps_per_epoch)
    # every test set's layout, checked before step 1 when a validation will happen
    validate = evaluation.validator(model, s.evaluation, s.inference, check=s.train.test_every <= total)
    schedule_steps = kept_schedule(saved, total, s.train)
    runner = trainer.Trainer(s.train, net, batches, validate, total, epoch_steps, rank, workers,
                             s.record, option_files.architecture_record(s.evaluation.model_name, s.model),
                             schedule_steps, world, split_origin)
    if saved:
        runner.load_state(saved, os.path.join(s.run.save, utility.STATE_NAME))
        log.info("resumed at step %d", runner.progress.step)
    return runner


LOADER_SHARE = 4  # --threads 0 on the CPU: at most a quarter of the cores load data (2 cores: none)


def share_cpu(threads: int, workers: int, device: torch.device, world: int = 1) -> int:
    """On the CPU, fit torch's compute threads and ``workers`` loader workers to the cores this
    process may use (one INFO line); the loader workers to start. Oversubscribed cores make
    torch's threads spin-wait for each other: several times slower on a busy machine."""
    if device.type != "cpu":
        return workers
    cores = max(utility.usable_cpus() // world, 1)
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if threads == 0 and from_env.isdigit() and int(from_env) > 0:
        threads, why = int(from_env), "OMP_NUM_THREADS"
    elif threads == 0:
        workers = min(workers, cores // LOADER_SHARE)  # the network's arithmetic comes first
        threads, why = cores - workers, "--threads 0: the cores left after the loader workers"
    else:
        why = "--threads"
    workers = min(workers, max(cores - threads, 0))
    torch.set_num_threads(threads)
    log.info("CPU: %d compute thread(s) and %d loader worker(s) on %d usable core(s) (%s)",
             threads, workers, cores, why)
    return workers


def initialise(model: torch.nn.Module, r: run_settings.RunSettings) -> None:
    """Load --pretrain into the model about to train (its body only, with --init_from);
    CheckpointError when the file does not fit."""
    if r.init_from:
        initial = load_body(model, r.pretrain, r.init_from, r.pretrain_tasks)
        log.info("initialised the body from %s; head, tail and query from its %s head except "
                 "%d key(s) left at random: %s", r.pretrain, r.init_from, len(initial),
                 ", ".join(initial[:4]) + (" ..." if len(initial) > 4 else ""))
    else:
        load_checkpoint(model, r.pretrain, file_tasks=r.pretrain_tasks)
        log.info("initialised from %s", r.pretrain)


def kept_schedule(saved: dict | None, total: int, t: run_settings.TrainSettings) -> int:
    """The steps the learning-rate schedule spans: a resumed run keeps its original length (a
    new --max_steps only moves where training stops), and says so; a warning when the cosine
    schedule's warm-up takes them all (its rate never comes down)."""
    original = (saved or {}).get("schedule_steps", total)
    if original != total:
        log.warning("--resume: the learning-rate schedule keeps the %d steps this run started "
                    "with; training now stops at step %d%s", original, total,
                    " (past the schedule's end the rate stays at its final value)"
                    if total > original else "")
    if t.schedule == "cosine" and t.warmup_steps >= original:
        log.warning("--warmup_steps %d is not shorter than the run's %d steps: the learning rate "
                    "only warms up (to %.3g at the last step) and never follows the cosine; "
                    "lower --warmup_steps", t.warmup_steps, original,
                    t.lr * min(original, t.warmup_steps) / max(t.warmup_steps, 1))
    return original


def previous_state(args: argparse.Namespace, r: run_settings.RunSettings) -> dict | None:
    """The saved training state to continue (--resume), None to start afresh; JobError (or
    StateError) when neither is possible."""
    state_path = os.path.join(r.save, utility.STATE_NAME)
    if not r.resume:
        if os.path.isfile(state_path) and not r.reset:
            raise JobError(f"{r.save} already holds a training run: continue it with --resume, or "
                           f"start afresh with --reset (or another --save)")
        replaced = [os.path.join(r.save, "model", utility.TRAINING_RECORD)]  # it describes that run
        if r.reset:  # and its state and weights: a --resume (or --test_only --resume) would take them
            replaced += [state_path, *glob.glob(os.path.join(glob.escape(r.save), "model", "model_*"))]
        for path in replaced:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # a folder of that name, a folder not writable
                raise JobError(f"cannot remove {path} of the run being replaced ({e.strerror}): "
                               f"move it away, or give another --save") from None
        return None
    if os.path.lexists(state_path) and not os.path.isfile(state_path):
        raise JobError(f"--resume: {state_path} is not a regular file (a pipe, a folder or a broken link): "
                       f"not a training state; move it away, then start afresh (--reset or --auto_resume)")
    if not os.path.isfile(state_path):
        raise JobError(f"--resume: no training state {state_path} to continue from")
    saved = checkpointing.read_state(state_path)
    if conflicts := option.resume_conflicts(saved["options"], args):
        raise JobError(f"--resume: these options differ from the saved run and would change its "
                       f"model, data or learning rates: {'; '.join(conflicts)}")
    return saved


def fit(runner: trainer.Trainer) -> int:
    """Train; an error that stops training is one line (the state of its step is saved)."""
    utility.collect_again()
    try:
        return runner.fit()
    except runfolder.SaveError as e:
        log.error("training stopped at step %d: %s; %s", runner.progress.step, e,
                  checkpointing.after_failed_save(runner.settings.save))
        return 1
    except (DataLayoutError, ImageReadError) as e:
        log.error("training stopped at step %d: %s (the training state of that step is saved; "
                  "fix the cause and continue with --resume)", runner.progress.step, utility.last_line(e))
        return 1


if __name__ == "__main__":
    sys.exit(main(args=ARGS))
