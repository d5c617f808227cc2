"""Evaluation: restore images with a model, score them, write results, metrics.json, results.md.

One place for ``--test_only`` and for the validations during training: ``evaluate`` runs the
Demo folders and test sets of the options; ``validator`` gives training the function it calls
every ``--test_every`` steps. Both end in ``evaluate_set`` -> ``model.restore``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import metrics
import records
import report
import stops
import utility
from data.benchmark import BenchmarkError, BenchmarkSet, supports
from data.degrade import imresize, imresize_uint8
from data.images import DataLayoutError, ImageFolder, ImageReadError, save_image
from model import restore
from model.tiling import CPU_TILES_PER_CALL, resolve_mode
from run_settings import EvalSettings, InferenceSettings

log = logging.getLogger("ipt")


# ---- Whole runs: --test_only, and training's validation ----
def evaluate(model: nn.Module, ev: EvalSettings, inference: InferenceSettings,
             checkpoint: str, checkpoint_sha256: str | None = None) -> int:
    """Restore the Demo folder and evaluate the test sets with every selected head; 1 on any
    failure. ``checkpoint_sha256``: the hash of the bytes loaded from ``checkpoint``, recorded as
    given (None: recorded as unknown). A stop signal (KeyboardInterrupt, ``stops.Interrupted``)
    ends it with one line: the reports of the finished sets are written, marked interrupted, and
    it returns ``stops.INTERRUPTED``; an unreadable image or an output not written, the same with 1."""
    task_ids = list(range(len(model.task_names))) if ev.task_id is None else [ev.task_id]
    training = training_length(checkpoint)  # now, beside the weights just loaded
    try:  # a missing or malformed set is said before any work, not after the sets before it
        check_sets(model, ev, ev.data_test, task_ids)
    except (DataLayoutError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    inference = auto_precision(model, inference)
    warn_precision(model, inference.precision)
    failed, results, finished, stop, status = 0, {}, [], None, 0
    try:
        for name in ev.data_test:
            out_dir = os.path.join(ev.save, report.RESULTS_FOLDER.format(name)) if ev.save_results else None
            try:
                if name == "Demo":
                    failed += restore_demo(model, ev, inference, task_ids, out_dir)
                else:
                    results[name] = evaluate_benchmark(model, ev, inference, name, task_ids, out_dir)
            except (DataLayoutError, ImageReadError, OSError) as e:  # SaveError: an image not written
                # a set's mean over the images before a bad one is no benchmark figure: the set
                # stops, and the reports of the sets finished before it are written, marked
                log.error("%s", e)
                stop, status = report.Interruption(f"an error in {name}", finished,
                                                   ev.data_test[len(finished):]), 1
                break
            finished.append(name)
    except KeyboardInterrupt as e:  # the traceback (and the loader it holds) freed before going on
        stop, status = report.Interruption(stops.signal_name(stops.stop_signal(e)), finished,
                                           ev.data_test[len(finished):]), stops.INTERRUPTED
    try:
        written, printed = report.write_reports(
            resolve_mode(model, inference.mode), ev, inference, results, checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256, training=training, interrupted=stop,
            title=f"IPT evaluation: {ev.model_name}, {checkpoint or 'random weights'}",
        ) if results else ([], "")
    except KeyboardInterrupt as e:
        log.warning("%s while writing the reports: some may be missing",
                    stops.signal_name(stops.stop_signal(e)))
        return stops.INTERRUPTED
    except OSError as e:  # SaveError: names the file and the space free there
        log.error("%s", e)
        return 1
    if stop is not None:
        where = f"reports written: {', '.join(written)}" if written else "no report written"
        log.warning("%s; %s", stop.line(), where)
        return status
    if failed:
        log.error("%d image(s) could not be read; see the messages above", failed)
    log.info("log: %s", os.path.join(ev.save, utility.LOG_NAME))
    if printed:
        print(printed, flush=True)
    return 1 if failed else 0


def validator(model: nn.Module, ev: EvalSettings, inference: InferenceSettings,
              check: bool = False) -> Callable[[nn.Module, int], tuple[dict, dict]] | None:
    """The validation a training run calls at a step: PSNR per "set/task" on the test sets (not
    Demo) and a preview image of each; it also writes metrics.json and results.md of that step.
    None when the options name no test set. ``model`` is the bare network (not DDP-wrapped);
    each validation evaluates the one it is given: that, its moving average or either compiled.
    With ``check``, a missing or malformed test set is a BenchmarkError now (its files listed,
    none decoded), not at the first validation. A stop signal raised in it (KeyboardInterrupt)
    goes through to the trainer, which stops the run: no report of that step is written."""
    sets = [d for d in ev.data_test if d != "Demo"]
    if "Demo" in ev.data_test:
        log.info("Demo is restored by --test_only only: training validates on %s",
                 ", ".join(sets) if sets else "no test set (no validation)")
    if not sets:
        return None
    task_ids = list(range(len(model.task_names)))
    if check:
        check_sets(model, ev, sets, task_ids)
    plain = dataclasses.replace(auto_precision(model, inference), self_ensemble=False)  # keeps --precision
    warn_precision(model, plain.precision)

    def validate(net: nn.Module, step: int) -> tuple[dict[str, float], dict[str, Tensor]]:
        previews: dict[str, Tensor] = {}
        results = {name: evaluate_benchmark(net, ev, plain, name, task_ids, None, previews)
                   for name in sets}
        report.write_reports(resolve_mode(model, plain.mode), ev, plain, results, step=step)
        model.train()
        return {f"{name}/{task}": r["psnr"] for name in sets for task, r in results[name].items()}, previews

    return validate


def restore_demo(model: nn.Module, ev: EvalSettings, inference: InferenceSettings,
                 task_ids: list[int], out_dir: str | None) -> int:
    """Restore every image of --dir_demo as given with each head, saving the quantised results
    (with --save_gt, the input ``_LR`` beside them); the number that could not be read."""
    folder = demo_folder(ev)
    log.info("Demo: %d image(s) in %s, heads %s", len(folder), ev.dir_demo,
             "+".join(model.task_names[t] for t in task_ids))
    failed = 0
    for stem, image in tqdm(prefetch(folder, ev.workers), total=len(folder), desc="restoring", unit="img",
                            dynamic_ncols=True):
        if isinstance(image, Exception):
            log.error("%s (skipped)", image)
            failed += 1
            continue
        for task_id in task_ids:
            y = restore_quantised(model, image, task_id, inference)
            if out_dir is not None:
                task, scale = model.task_names[task_id], model.scale[task_id]
                save_image(y, os.path.join(out_dir, output_name(stem, task, scale)))
                if ev.save_gt:
                    save_image(image, os.path.join(out_dir, output_name(stem, task, scale, "LR")))
    where = f", results in {out_dir}" if out_dir else " (add --save_results to write them)"
    log.info("Demo: restored %d image(s)%s", len(folder) - failed, where)
    return failed


def demo_folder(ev: EvalSettings) -> ImageFolder:
    """The images of --dir_demo (none decoded); FileNotFoundError or BenchmarkError without any."""
    folder = ImageFolder(ev.dir_demo)
    if len(folder) == 0:
        raise BenchmarkError(f"--dir_demo {ev.dir_demo}: no images (png, jpg, bmp, tif, webp)")
    return folder


def check_sets(model: nn.Module, ev: EvalSettings, names: list[str], task_ids: list[int]) -> None:
    """Each test set's layout, its files listed and none decoded: FileNotFoundError or a
    BenchmarkError for one that is missing or malformed."""
    for name in names:
        if name == "Demo":
            demo_folder(ev)
        else:
            benchmark_sets(model, ev, name, task_ids)


def evaluate_benchmark(model: nn.Module, ev: EvalSettings, inference: InferenceSettings, name: str,
                       task_ids: list[int], out_dir: str | None, previews: dict | None = None) -> dict:
    """Metrics of each selected head that ``name`` is a test set for."""
    model.eval()
    results = {}
    for t, data in benchmark_sets(model, ev, name, task_ids):
        task = model.task_names[t]
        r = evaluate_set(model, data, t, inference, out_dir, ev.workers, previews, ev.save_gt)
        log.info("%s %s: PSNR %.2f dB, SSIM %.4f (Y); PSNR %.2f dB, SSIM %.4f (RGB); %d images",
                 name, task, r["psnr_y"], r["ssim_y"], r["psnr_rgb"], r["ssim_rgb"], r["n_images"])
        results[task] = r
    return results


def benchmark_sets(model: nn.Module, ev: EvalSettings, name: str,
                   task_ids: list[int]) -> list[tuple[int, BenchmarkSet]]:
    """(head, its pairs) of test set ``name`` for each selected head it is a test set for; a
    BenchmarkError when there is none, or the set is missing or malformed (files listed only)."""
    tasks = [t for t in task_ids if supports(name, model.task_names[t])]
    if not tasks:
        heads = "+".join(model.task_names[t] for t in task_ids)
        raise BenchmarkError(f"--data_test {name} is not a test set for {heads}")
    return [(t, BenchmarkSet(ev.dir_data, name, model.task_names[t], model.scale[t], ev.seed,
                             ev.test_range, clip_noise=ev.clip_noise)) for t in tasks]


TRAINED_NAMES = re.compile(r"model_(\d+|best|latest)\.(pt|safetensors)")  # weights training writes


def training_length(checkpoint: str) -> dict | None:
    """How long a checkpoint's weights were trained, from the training.json beside them (None
    without one): steps (None for a file the record does not describe as it is now:
    ``unverified`` says why), max_steps, finished and interrupted (of these weights), run_steps
    (the run's last save) and the record's path."""
    record = records.read_training_record(checkpoint) if checkpoint else None
    if record is None:
        return None
    steps, unverified = described_steps(checkpoint, record)
    run_steps = record.get("step")  # the record's fields are checked by records.TRAINING
    last = steps is not None and steps == run_steps
    return {"steps": steps, "max_steps": record.get("max_steps"),
            "finished": last and record.get("finished", False),
            "interrupted": last and record.get("interrupted", False), "run_steps": run_steps,
            "source": os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                   utility.TRAINING_RECORD),
            "unverified": unverified}


def described_steps(checkpoint: str, record: dict) -> tuple[int | None, str | None]:
    """(the step training saved the checkpoint at, None) when the record's ``weights`` entry for
    its file name ({step, size, mtime_ns}, taken right after training wrote it) matches the file
    now; else (None, why not), e.g. weights saved after the last training.json could be written.
    (None, None) for a file name training never writes (the authors' checkpoints)."""
    name = os.path.basename(checkpoint)
    entry = record.get("weights", {}).get(name)  # checked by records.TRAINING: {step, size, mtime_ns}
    if entry is None:
        if TRAINED_NAMES.fullmatch(name) is None:
            return None, None
        return None, (f"training.json does not describe {name} (no step, size and time of it "
                      f"under \"weights\")")
    step, size, mtime = entry["step"], entry["size"], entry["mtime_ns"]
    try:
        now = os.stat(checkpoint)
    except OSError as e:
        return None, f"cannot read the size and time of {name} ({e.strerror or e})"
    if (now.st_size, now.st_mtime_ns) == (size, mtime):
        return step, None
    which = ("newer than training.json" if now.st_mtime_ns > mtime else
             "not the file training.json describes")
    return None, (f"the weights are {which}: {name} is {now.st_size} bytes of "
                  f"{_when(now.st_mtime_ns)}, training.json describes {size} bytes of {_when(mtime)} "
                  f"(step {step})")


def _when(mtime_ns: int) -> str:
    """A file time, local, to the microsecond."""
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).isoformat(sep=" ", timespec="microseconds")


def output_name(stem: str, task: str, scale: int, image: str = "SR") -> str:
    """``<stem>_x<s>_SR.png`` for super-resolution, ``<stem>_<task>_SR.png`` for scale-1 tasks;
    ``image``: SR (the output), LR (the input) or HR (the target)."""
    tag = f"x{scale}" if scale > 1 else task
    return f"{stem}_{tag}_{image}.png"


def prefetch(dataset: Dataset, workers: int) -> DataLoader:
    """Items of a map-style dataset, read ahead by ``workers`` processes (0: in this process),
    which ignore the stop signals that reach the process group: this process stops them."""
    workers = min(workers, len(dataset), utility.usable_cpus())
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      worker_init_fn=stops.ignore_stop_signals)


def restore_quantised(model: nn.Module, image: Tensor, task_id: int,
                      settings: InferenceSettings) -> Tensor:
    """One (C, H, W) image in 0..255 restored by head ``task_id``, quantised, on the CPU, 0..255."""
    device = next(model.parameters()).device
    x = image.float().unsqueeze(0).to(device) * (settings.rgb_range / 255)
    y = restore(model, x, task_id, settings.mode, settings.crop_batch_size, settings.self_ensemble,
                settings.tile_size, progress=True, precision=settings.precision)
    return metrics.quantize(y, settings.rgb_range)[0].cpu() * (255 / settings.rgb_range)


# --precision bf16: what stays fp32, and why (measured in docs/BENCHMARKS.md, "bf16 inference").
# Only the network's forward runs under autocast (model/tiling.py says why); fp32 throughout the rest:
# - MATLAB bicubic (data.degrade: the LR inputs made from HR, the SR baseline of
#   ``input_baseline``) runs outside autocast. On uint8 images it works in float64, which autocast
#   leaves alone; its fp32 path under CPU autocast would run its matmuls in bf16: on Set5 baby x2,
#   up to 1.05 grey levels off, 9% of the pixels by half a level or more;
# - the quantisation to 8-bit levels (bf16 has no fractional bits from 128 up, so rounding a
#   bf16 value to levels would round twice) and the metrics; PSNR and SSIM convert to float64
#   (metrics._as_batch), which autocast leaves alone, so even SSIM's window conv2d would stay
#   exact inside it (Set5 baby x2: identical values);
# - LayerNorm and softmax follow autocast's policy, unchanged: on CUDA it runs them in fp32; on
#   the CPU it leaves them in their input's dtype (bf16), where torch's kernels compute in fp32
#   and round only the result (bit-equal to fp32 then rounding, checked with torch 2.14), and
#   the matmul after each rounds its input to bf16 anyway: fp32 there would change nothing.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512, AMX) and Arm cpuinfo flags
NATIVE_BF16_CAPABILITY = 8  # CUDA compute capability with bf16 tensor cores (Ampere and later)


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags in /proc/cpuinfo (x86 "flags", Arm "Features"); None where unreadable."""
    flags = utility.cpuinfo("flags", "Features")
    return None if flags is None else set(flags.split())


def emulated_bf16(device: torch.device) -> str | None:
    """Why bf16 arithmetic is emulated (slow) on ``device``; None where it is native or unknown."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (None if major >= NATIVE_BF16_CAPABILITY else
                f"this GPU (compute capability {major}.{minor}) has no bf16 tensor cores")
    flags = cpu_flags() if device.type == "cpu" else None
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return (f"this CPU has no native bf16 arithmetic (none of {', '.join(BF16_CPU_FLAGS)} in "
            f"/proc/cpuinfo; torch uses {torch.backends.cpu.get_cpu_capability()})")


def warn_precision(model: nn.Module, precision: str) -> None:
    """One warning line when --precision bf16 would be emulated on the model's device."""
    why = emulated_bf16(next(model.parameters()).device) if precision == "bf16" else None
    if why:
        log.warning("--precision bf16: %s, so autocast emulates it, usually slower than "
                    "--precision single", why)


AUTO_BF16_GAIN = 1.15  # --precision auto takes bf16 only where its forward is this many times faster
AUTO_SIZE = 64  # the side of the timed input of a network that takes any size (Restormer)


def auto_precision(model: nn.Module, inference: InferenceSettings,
                   clock: Callable[[], float] = time.perf_counter,
                   option: str = "--precision") -> InferenceSettings:
    """``inference`` with --precision auto made single or bf16: whichever ran one call's worth of
    tiles (after warm-up calls) faster on the model's device, bf16 only by AUTO_BF16_GAIN; rank
    0 decides for a torchrun job. One INFO line (of ``option``: --amp auto asks the same) says
    what it chose and why; nothing is kept."""
    if inference.precision != "auto":
        return inference
    device = next(model.parameters()).device
    side = getattr(model, "patch_size", None) or inference.tile_size or AUTO_SIZE
    mode = "whole" if side == AUTO_SIZE else "fast"
    x = torch.rand(CPU_TILES_PER_CALL, 3, side, side, device=device) * inference.rgb_range

    def timed(precision: str) -> float:
        for warm_up in (x[:1], x):  # kernels set up; --compile's graphs built (for one tile, then any count)
            restore(model, warm_up, precision=precision, mode=mode, tile_size=side)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        restore(model, x, precision=precision, mode=mode, tile_size=side)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    model.eval()
    seconds = {precision: timed(precision) for precision in ("single", "bf16")}
    gain = seconds["single"] / max(seconds["bf16"], 1e-9)
    choice = ["bf16" if gain >= AUTO_BF16_GAIN else "single"]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(choice, src=0)
    why = (f"{CPU_TILES_PER_CALL} tiles of {side}x{side} took {seconds['single']:.3f} s in fp32 and "
           f"{seconds['bf16']:.3f} s in bf16 on {device.type}: bf16 {gain:.2f}x as fast "
           f"(bf16 is taken from {AUTO_BF16_GAIN}x)")
    log.info("%s auto: %s (%s)", option, choice[0], why)
    return dataclasses.replace(inference, precision=choice[0], precision_reason=why)


METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")  # psnr, ssim: --metric_channel
BASELINE = ("baseline_psnr", "baseline_ssim")  # the input itself: bicubic for SR, else as given
GAIN = ("gain_psnr",)  # psnr - baseline_psnr: what the network adds to its input


def input_baseline(lr: Tensor, scale: int) -> Tensor:
    """What the network improves on: the input, quantised; for SR the uint8 LR image upscaled
    with MATLAB bicubic as MATLAB does on uint8 (rounded after each pass)."""
    if scale > 1 and lr.dtype == torch.uint8:
        return imresize_uint8(lr, scale).float()
    x = lr.float()
    return metrics.quantize(imresize(x, scale) if scale > 1 else x)


def image_metrics(sr: Tensor, baseline: Tensor, hr: Tensor, scale: int,
                  channel: str = "y") -> dict[str, float]:
    """PSNR and SSIM of one quantised output on Y and on RGB (psnr/ssim repeat ``channel``'s), those
    of its input (``baseline``) on ``channel`` and the gain of the output's PSNR over the input's."""
    m = {  # calc_* shave `scale` pixels a side, none at scale 1
        "psnr_y": metrics.calc_psnr(sr, hr, scale)[0],
        "ssim_y": metrics.calc_ssim(sr, hr, scale)[0],
        "psnr_rgb": metrics.calc_psnr(sr, hr, scale, y_channel=False)[0],
        "ssim_rgb": metrics.calc_ssim(sr, hr, scale, y_channel=False)[0],
    }
    on_y, psnr = channel == "y", m[f"psnr_{channel}"]
    base = metrics.calc_psnr(baseline, hr, scale, y_channel=on_y)[0]
    return {"psnr": psnr, "ssim": m[f"ssim_{channel}"], **m, "baseline_psnr": base,
            "baseline_ssim": metrics.calc_ssim(baseline, hr, scale, y_channel=on_y)[0],
            "gain_psnr": psnr - base if psnr != base else 0.0}  # an exact input kept exact: inf - inf


def evaluate_set(model: nn.Module, data: BenchmarkSet, task_id: int, settings: InferenceSettings,
                 out_dir: str | None, workers: int = 0, previews: dict | None = None,
                 save_gt: bool = False) -> dict:
    """Restore one test set with one head; the metrics per image and their means.

    ``out_dir``, when given, receives each restored image and its comparison sheet (input | output
    | target, and a zoom where the output gains most), with ``save_gt`` also the input (``_LR``)
    and the target (``_HR``); ``previews`` the first restored image under "<set>/<task>".
    """
    task, scale = model.task_names[task_id], model.scale[task_id]
    per_image: dict[str, dict[str, float]] = {}
    for pair in tqdm(prefetch(data, workers), total=len(data), desc=f"{data.dataset} {task}",
                     unit="img", dynamic_ncols=True):
        if isinstance(pair, Exception):
            raise pair
        y = restore_quantised(model, pair.lr, task_id, settings)
        if y.shape != pair.hr.shape:
            raise RuntimeError(f"{data.dataset}/{pair.name}: output {tuple(y.shape)} does not match "
                               f"the target {tuple(pair.hr.shape)}")
        baseline, hr = input_baseline(pair.lr, scale), pair.hr.float()
        m = per_image[pair.name] = image_metrics(y, baseline, hr, scale, settings.metric_channel)
        if previews is not None:
            previews.setdefault(f"{data.dataset}/{task}", y)
        if out_dir is None:
            continue
        save_image(y, os.path.join(out_dir, output_name(pair.name, task, scale)))
        report.write_sheet(os.path.join(out_dir, report.sheet_name(pair.name, task)), baseline, y, hr,
                           m["baseline_psnr"], m["psnr"])
        if save_gt:
            save_image(pair.lr.float(), os.path.join(out_dir, output_name(pair.name, task, scale, "LR")))
            save_image(pair.hr, os.path.join(out_dir, output_name(pair.name, task, scale, "HR")))
    # the mean of each metric over the images (NaN for none)
    means = {k: sum(m[k] for m in per_image.values()) / len(per_image) if per_image else float("nan")
             for k in METRICS + BASELINE + GAIN}
    return {**means, "n_images": len(per_image), "per_image": per_image}
