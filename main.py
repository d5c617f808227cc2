"""IPT from the command line: parse the options, build the model, run the job."""
from __future__ import annotations

import logging
import os
import sys
import tempfile

import torch
from torch.utils.data import DataLoader

import option
import trainer
import utility
from data.benchmark import BenchmarkError, BenchmarkSet, supports
from data.finetune import DIV2K, RainTrainL
from data.images import DataLayoutError, ImageFolder, ImageReadError
from data.sample import sample_photos
from data.stream import PairStream
from model import CheckpointError, build_model, load_checkpoint
from model.tiling import resolve_mode

log = logging.getLogger("ipt")


def main(argv: list[str] | None = None) -> int:
    """Run the job the options describe; the exit status (0 ok, 1 failures, 2 bad options)."""
    args = option.parse_args(argv)
    device = pick_device(args)
    if device is None:
        return 2
    problem = run_dir_problem(args)
    if problem:
        print(f"main.py: error: {problem}", file=sys.stderr)
        return 1
    command = " ".join(sys.argv if argv is None else ["main.py", *argv])
    lock, stale = utility.RunLock(args.save, command), None
    if distributed_rank() == 0:  # the other ranks of a torchrun job write nothing there
        try:
            stale = lock.acquire()
        except utility.LockError as e:
            print(f"main.py: error: {e}", file=sys.stderr)
            return 1
    with lock:
        utility.setup_logging(args.save, args.debug, quiet=distributed_rank() > 0)
        log.info("command: %s", command)
        if stale:
            log.warning("%s", stale)
        return run(args, device)


def run(args, device: torch.device) -> int:
    """The job itself, once the run directory is ours."""
    if device.type == "cpu" and utility.keep_freed_memory():
        log.debug("glibc malloc keeps freed blocks for reuse (fewer page faults per forward)")
    given = option.training_options_given(args)
    if given and args.test_only:
        log.warning("training options have no effect with --test_only: %s", " ".join(given))
    torch.manual_seed(args.seed)
    if not args.test_only:
        return train(args, device)
    model = prepare_model(args, device)
    if model is None:
        return 1
    return evaluate(args, model)


def run_dir_problem(args) -> str | None:
    """Why --save cannot be this run's directory (None when it can); creates it if needed."""
    where = f"--save {args.save}"
    if os.path.exists(args.save) and not os.path.isdir(args.save):
        return f"{where} is a file, not a folder: give a run directory"
    if args.resume and not os.path.isdir(args.save):
        return f"--resume: no run directory {args.save} to continue (check --save)"
    try:
        os.makedirs(args.save, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.save):
            pass
    except OSError as e:
        return f"{where}: cannot write there ({e.strerror or e})"
    return None


def distributed_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def pick_device(args) -> torch.device | None:
    """CUDA unless --cpu or none is present; None (after a message) when --precision cannot run."""
    use_cuda = torch.cuda.is_available() and not args.cpu
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if args.precision == "half" and device.type != "cuda":
        print("main.py: error: --precision half needs a CUDA device; drop it (or --cpu)", file=sys.stderr)
        return None
    if args.amp == "fp16" and device.type != "cuda":
        print("main.py: error: --amp fp16 needs a CUDA device; use --amp bf16 on the CPU", file=sys.stderr)
        return None
    return device


def checkpoint_path(args) -> str:
    """The file to load: --pretrain, or the run directory's model for the authors' --resume."""
    if args.pretrain:
        return args.pretrain
    if args.resume == -1:
        return os.path.join(args.save, "model", "model_latest.pt")
    if args.resume > 0:
        return os.path.join(args.save, "model", f"model_{args.resume}.pt")
    return ""


def prepare_model(args, device: torch.device) -> torch.nn.Module | None:
    """The model of the options with its checkpoint loaded, on ``device``, in eval mode."""
    model = build_model(args)
    path = checkpoint_path(args)
    if path:
        try:
            load_checkpoint(model, path)
        except CheckpointError as e:
            log.error("%s", e)
            return None
        log.info("loaded %s", path)
    else:
        log.warning("no --pretrain given: the network has random weights")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, heads %s, %s parameters, on %s", type(model).__name__,
             "+".join(model.task_names), f"{n_params:,}", device)
    model = model.to(device).eval().requires_grad_(False)
    return model.half() if args.precision == "half" else model


def evaluate(args, model: torch.nn.Module) -> int:
    """Restore Demo folders and evaluate test sets with every selected head; 1 on any failure."""
    task_ids = list(range(len(model.task_names))) if args.task_id is None else [args.task_id]
    settings = inference_settings(args, args.self_ensemble)
    failed, results = 0, {}
    for name in args.data_test:
        out_dir = os.path.join(args.save, f"results-{name}") if args.save_results else None
        try:
            if name == "Demo":
                failed += restore_demo(args, model, task_ids, settings, out_dir)
            else:
                results[name] = evaluate_benchmark(args, model, name, task_ids, settings, out_dir)
        except (DataLayoutError, FileNotFoundError, ImageReadError) as e:
            log.error("%s", e)
            return 1
    if results:
        write_reports(args, model, results)
    if failed:
        log.error("%d image(s) could not be read; see the messages above", failed)
    log.info("log: %s", os.path.join(args.save, utility.LOG_NAME))
    return 1 if failed else 0


def inference_settings(args, self_ensemble: bool) -> trainer.InferenceSettings:
    """How the options say whole images are restored and scored."""
    return trainer.InferenceSettings(args.chop, args.crop_batch_size, self_ensemble, args.rgb_range,
                                     args.tile_size, args.metric_channel)


def restore_demo(args, model, task_ids: list[int], settings, out_dir: str | None) -> int:
    """Restore every image of --dir_demo as given; the number that could not be read."""
    folder = ImageFolder(args.dir_demo)
    total = len(folder)
    if total == 0:
        raise BenchmarkError(f"--dir_demo {args.dir_demo}: no images (png, jpg, bmp, tif)")
    log.info("Demo: %d image(s) in %s, heads %s", total, args.dir_demo,
             "+".join(model.task_names[t] for t in task_ids))
    images = trainer.prefetch(folder, args.n_threads)
    done, bad = trainer.restore_images(model, images, task_ids, settings, out_dir, args.save_gt, total)
    where = f", results in {out_dir}" if out_dir else " (add --save_results to write them)"
    log.info("Demo: restored %d image(s)%s", done, where)
    return bad


def evaluate_benchmark(args, model, name: str, task_ids: list[int], settings,
                       out_dir: str | None, previews: dict | None = None) -> dict:
    """Metrics of each selected head that ``name`` is a test set for."""
    model.eval()
    tasks = [t for t in task_ids if supports(name, model.task_names[t])]
    if not tasks:
        heads = "+".join(model.task_names[t] for t in task_ids)
        raise BenchmarkError(f"--data_test {name} is not a test set for {heads}")
    results = {}
    for t in tasks:
        task, scale = model.task_names[t], model.scale[t]
        data = BenchmarkSet(args.dir_data, name, task, scale, args.seed, args.test_range,
                            clip_noise=args.test_noise == "clipped")
        r = trainer.evaluate_set(model, data, t, settings, out_dir, args.n_threads, previews,
                                 args.save_gt)
        log.info("%s %s: PSNR %.2f dB, SSIM %.4f (Y); PSNR %.2f dB, SSIM %.4f (RGB); %d images",
                 name, task, r["psnr_y"], r["ssim_y"], r["psnr_rgb"], r["ssim_rgb"], r["n_images"])
        results[task] = r
    return results


def write_reports(args, model, results: dict, step: int | None = None) -> None:
    """RUN/metrics.json and RUN/results.md, of a checkpoint or (``step``) of a training run's
    validation at that step (no self-ensemble there)."""
    path = checkpoint_path(args) if step is None else ""
    mode = resolve_mode(model, args.chop)
    meta = {"checkpoint": path or None, "checkpoint_sha256": utility.sha256_file(path) if path else None,
            "step": step, "commit": utility.git_commit(os.path.dirname(os.path.abspath(__file__))),
            "options": utility.jsonable(vars(args)), "model": args.model, "tiling": mode,
            "self_ensemble": args.self_ensemble and step is None,
            "metric_channel": args.metric_channel, "test_noise": args.test_noise}
    metrics_path, table_path = report_paths(args.save, step)
    utility.write_json(metrics_path, {"meta": meta, "results": results})
    table = trainer.results_table(results, args.metric_channel)
    utility.write_text(table_path, f"# Results\n\nmodel: {args.model}, checkpoint: `{path or 'random weights'}`, "
                                   f"tiling: {mode}, self-ensemble: {args.self_ensemble}\n\n{table}")
    log.info("\n%s", table)
    log.info("metrics: %s, table: %s", metrics_path, table_path)


def report_paths(save: str, step: int | None) -> tuple[str, str]:
    """Where the reports go: metrics.json and results.md, except that an evaluation (``step``
    None) in a training run's directory writes metrics_test.json and results_test.md beside the
    validation's, which it must not replace."""
    if step is None and os.path.isfile(os.path.join(save, trainer.STATE_NAME)):
        return os.path.join(save, "metrics_test.json"), os.path.join(save, "results_test.md")
    return os.path.join(save, "metrics.json"), os.path.join(save, "results.md")


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------
def train(args, device: torch.device) -> int:
    """Pre-train (several heads, no --task) or fine-tune (one head) as the options say."""
    rank, world = start_distributed(device)
    try:
        status = _train(args, device, rank, world)
        if world > 1:  # a rank that tears gloo down while another still saves can abort (SIGABRT)
            torch.distributed.barrier()
        return status
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _train(args, device: torch.device, rank: int, world: int) -> int:
    if args.task_id is not None and len(args.scale) > 1:  # fine-tuning gives a single-head model
        name = args.task_names[args.task_id]
        args.scale, args.task_names, args.task_id, args.num_queries = [args.scale[args.task_id]], [name], 0, 1
    state_path = os.path.join(args.save, trainer.STATE_NAME)
    if args.resume and not os.path.isfile(state_path):
        log.error("--resume: no training state %s to continue from", state_path)
        return 1
    saved = None
    if args.resume:
        try:
            saved = trainer.read_state(state_path)
        except trainer.StateError as e:
            log.error("%s", e)
            return 1
        conflicts = option.resume_conflicts(saved["options"], args)
        if conflicts:
            log.error("--resume: these options differ from the saved run and would change its "
                      "model or data: %s", "; ".join(conflicts))
            return 1
    elif os.path.isfile(state_path) and not args.reset:
        log.error("%s already holds a training run: continue it with --resume, or start afresh "
                  "with --reset (or another --save)", args.save)
        return 1
    model = build_model(args)
    if args.pretrain and not args.resume:
        try:
            load_checkpoint(model, args.pretrain)
        except CheckpointError as e:
            log.error("%s", e)
            return 1
        log.info("initialised from %s", args.pretrain)
    model = model.to(device)
    data = make_training_data(args, rank, world, saved.get("loader_workers") if saved else None)
    if data is None:
        return 1
    batches, steps_per_epoch, workers = data
    total = args.max_steps or (args.epochs or 0) * steps_per_epoch
    if total <= 0:
        log.error("--epochs 0 means no limit for a streamed data set: give --max_steps")
        return 1
    net = torch.compile(model) if args.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(model.task_names) > 1)  # other tasks' heads sit idle
    log.info("training %s (%s), %d steps of batch %d x %d process(es), %d step(s) an epoch",
             "+".join(model.task_names), "pre-training" if len(model.task_names) > 1 else "fine-tuning",
             total, args.batch_size, world, steps_per_epoch)
    runner = trainer.Trainer(args, net, batches, make_validation(args, model), total, steps_per_epoch,
                             rank, workers)
    if saved is not None:
        runner.load_state(saved)
        log.info("resumed from %s at step %d", state_path, runner.progress.step)
    try:
        return runner.fit()
    except utility.SaveError as e:
        log.error("training stopped at step %d: %s; make room and continue with --resume",
                  runner.progress.step, e)
        return 1
    except (DataLayoutError, ImageReadError) as e:
        log.error("training stopped at step %d: %s (the training state of that step is saved; "
                  "fix the cause and continue with --resume)", runner.progress.step, last_line(e))
        return 1


def last_line(error: BaseException) -> str:
    """The message of an error, without the worker traceback a DataLoader puts before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(error):  # raised in a loader worker
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


def start_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size): joins the torchrun process group (gloo on the CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world


def make_training_data(args, rank: int, world: int, saved_workers: int | None = None):
    """(batch factory keyed by the first step, steps per epoch, loader workers) for --data_train;
    None on errors. A resumed run keeps the workers it started with: batch k depends on them."""
    if len(args.data_train) != 1:
        log.error("--data_train: one training set at a time, got %s", "+".join(args.data_train))
        return None
    name, tasks = args.data_train[0], args.task_names
    common = dict(batch_size=args.batch_size, patch_size=args.patch_size, seed=args.seed, rank=rank,
                  world_size=world, augment=not args.no_augment, task_id=args.task_id,
                  streaks_dir=args.streaks_dir or None, lr_in_loader=not args.gpu_degrade)
    try:
        if name == "Sample":
            stream = PairStream(sample_photos("train"), tasks, **common)
        elif name == "ImageNet":
            stream = PairStream(imagenet_root(args.dir_data), tasks, **common)
        elif name == "DIV2K":
            stream = DIV2K(args.dir_data, tasks, data_range=args.train_range, **common)
        elif name == "RainTrainL":
            stream = RainTrainL(args.dir_data, tasks=tasks, **common)
        else:
            log.error("--data_train %s: unknown; use Sample, ImageNet, DIV2K or RainTrainL", name)
            return None
        workers = loader_workers(args.n_threads, len(stream.source), world, saved_workers)
    except (DataLayoutError, FileNotFoundError, ValueError) as e:
        log.error("--data_train %s: %s", name, e)
        return None

    def batches(start: int) -> DataLoader:
        return DataLoader(stream.with_start(start), batch_size=None, num_workers=workers,
                          pin_memory=torch.cuda.is_available() and not args.cpu)

    return batches, stream.steps_per_epoch, workers


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int, n_files: int, world: int, saved: int | None = None) -> int:
    """Loader workers per process: --n_threads, capped by the cores each process may use and by
    the files (each worker of each process reads its own run of them); one INFO line says why."""
    if n_files < world:
        raise ValueError(f"{n_files} training file(s) cannot feed {world} processes: give more "
                         f"files or fewer processes")
    if saved is not None:
        if saved != requested:
            log.info("loader workers: %d, as when this run started (--n_threads %d)", saved, requested)
        return saved
    by_cpu, by_files = max(usable_cpus() // world, 1), n_files // world
    workers = min(requested, by_cpu, by_files)
    if workers < requested:
        why = (f"{usable_cpus()} usable core(s) for {world} process(es)" if workers == by_cpu
               else f"{n_files} training files for {world} process(es)")
        log.info("loader workers: %d per process instead of --n_threads %d (%s)", workers,
                 requested, why)
    return workers


def imagenet_root(dir_data: str) -> str:
    """ImageNet's train folder (or its shards): DIR/ImageNet/train if present, else DIR/ImageNet."""
    base = os.path.join(dir_data, "ImageNet")
    return os.path.join(base, "train") if os.path.isdir(os.path.join(base, "train")) else base


def make_validation(args, model: torch.nn.Module):
    """A function giving validation PSNR per (set, task) on --data_test, or None without one;
    each call also writes metrics.json and results.md of that step."""
    sets = [d for d in args.data_test if d != "Demo"]
    if not sets:
        return None
    settings = inference_settings(args, self_ensemble=False)
    task_ids = list(range(len(model.task_names)))

    def validate(net: torch.nn.Module, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        previews = {}
        results = {name: evaluate_benchmark(args, model, name, task_ids, settings, None, previews)
                   for name in sets}
        write_reports(args, model, results, step)
        model.train()
        return {f"{name}/{task}": r["psnr"] for name in sets for task, r in results[name].items()}, previews

    return validate


if __name__ == "__main__":
    sys.exit(main())
