"""Running the network over data sets: restoring folders, evaluating test sets (training later)."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import utility
from data.benchmark import PAPER_RESULTS, BenchmarkSet
from data.degrade import imresize
from data.images import save_image
from model import restore

log = logging.getLogger("ipt")


@dataclass
class InferenceSettings:
    """How whole images go through the network (from --chop, --crop_batch_size, --self_ensemble)."""

    mode: str = "auto"
    crop_batch_size: int = 64
    self_ensemble: bool = False
    rgb_range: float = 255


def output_name(stem: str, task: str, scale: int, kind: str = "SR") -> str:
    """``<stem>_x<s>_SR.png`` for super-resolution, ``<stem>_<task>_SR.png`` for scale-1 tasks."""
    tag = f"x{scale}" if scale > 1 else task
    return f"{stem}_{tag}_{kind}.png"


def prefetch(dataset: Dataset, workers: int) -> DataLoader:
    """Items of a map-style dataset, read ahead by ``workers`` processes (0: in this process)."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=min(workers, len(dataset), os.cpu_count() or 1))


def restore_images(model: nn.Module, images: Iterable[tuple[str, Tensor | Exception]],
                   task_ids: list[int], settings: InferenceSettings, out_dir: str | None,
                   save_input: bool = False, total: int | None = None) -> tuple[int, int]:
    """Restore each image with each head, saving quantised results; returns (done, failed)."""
    device = next(model.parameters()).device
    done = failed = 0
    for stem, image in tqdm(images, total=total, desc="restoring", unit="img", dynamic_ncols=True):
        if isinstance(image, Exception):
            log.error("%s (skipped)", image)
            failed += 1
            continue
        x = image.float().unsqueeze(0).to(device) * (settings.rgb_range / 255)
        for task_id in task_ids:
            y = restore(model, x, task_id, settings.mode, settings.crop_batch_size, settings.self_ensemble)
            y = utility.quantize(y, settings.rgb_range) * (255 / settings.rgb_range)
            if out_dir is not None:
                task, scale = model.task_names[task_id], model.scale[task_id]
                save_image(y[0], os.path.join(out_dir, output_name(stem, task, scale)))
                if save_input:
                    save_image(image, os.path.join(out_dir, output_name(stem, task, scale, "LR")))
        done += 1
    return done, failed


METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb")
BASELINE = ("baseline_psnr", "baseline_ssim")  # the input itself: bicubic for SR, else as given


def input_baseline(lr: Tensor, scale: int) -> Tensor:
    """What the network improves on: the input, bicubic-upscaled (MATLAB) for SR, quantised."""
    x = lr.float()
    return utility.quantize(imresize(x, scale) if scale > 1 else x)


def image_metrics(sr: Tensor, hr: Tensor, scale: int) -> dict[str, float]:
    """PSNR and SSIM of one quantised output, on Y with the authors' shave and on RGB."""
    return {  # calc_* shave `scale` pixels a side, none at scale 1
        "psnr": utility.calc_psnr(sr, hr, scale)[0],
        "ssim": utility.calc_ssim(sr, hr, scale)[0],
        "psnr_rgb": utility.calc_psnr(sr, hr, scale, y_channel=False)[0],
        "ssim_rgb": utility.calc_ssim(sr, hr, scale, y_channel=False)[0],
    }


def evaluate_set(model: nn.Module, data: BenchmarkSet, task_id: int, settings: InferenceSettings,
                 out_dir: str | None, workers: int = 0) -> dict:
    """Restore one test set with one head; the metrics per image and their means."""
    device = next(model.parameters()).device
    task, scale = model.task_names[task_id], model.scale[task_id]
    per_image: dict[str, dict[str, float]] = {}
    for pair in tqdm(prefetch(data, workers), total=len(data), desc=f"{data.dataset} {task}",
                     unit="img", dynamic_ncols=True):
        if isinstance(pair, Exception):
            raise pair
        x = pair.lr.float().unsqueeze(0).to(device) * (settings.rgb_range / 255)
        y = restore(model, x, task_id, settings.mode, settings.crop_batch_size, settings.self_ensemble)
        y = utility.quantize(y, settings.rgb_range)[0].cpu() * (255 / settings.rgb_range)
        if y.shape != pair.hr.shape:
            raise RuntimeError(f"{data.dataset}/{pair.name}: output {tuple(y.shape)} does not match "
                               f"the target {tuple(pair.hr.shape)}")
        per_image[pair.name] = image_metrics(y, pair.hr.float(), scale)
        baseline = input_baseline(pair.lr, scale)
        per_image[pair.name].update({f"baseline_{k}": v for k, v in
                                     image_metrics(baseline, pair.hr.float(), scale).items()
                                     if k in ("psnr", "ssim")})
        if out_dir is not None:
            save_image(y, os.path.join(out_dir, output_name(pair.name, task, scale)))
    means = {k: _mean([m[k] for m in per_image.values()]) for k in METRICS + BASELINE}
    return {**means, "n_images": len(per_image), "per_image": per_image}


def _mean(values: list[float]) -> float:
    """The mean, inf when every value is inf (identical images)."""
    return sum(values) / len(values) if values else float("nan")


def results_table(results: dict) -> str:
    """A Markdown table of our metrics beside the paper's."""
    lines = ["| dataset | task | images | PSNR (Y) | SSIM (Y) | input PSNR | input SSIM | paper PSNR "
             "| paper SSIM | PSNR (RGB) | SSIM (RGB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            paper_psnr, paper_ssim = PAPER_RESULTS.get((dataset, task), (None, None))
            cells = [dataset, task, str(r["n_images"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                     f"{r['baseline_psnr']:.2f}", f"{r['baseline_ssim']:.4f}", _fmt(paper_psnr, 2), _fmt(paper_ssim, 4), f"{r['psnr_rgb']:.2f}", f"{r['ssim_rgb']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = ("PSNR/SSIM (Y): the paper's convention (Y channel, `scale` pixels shaved for SR, none "
             "for scale 1); RGB: all channels, same shave. Input: the network's input itself "
             "(bicubic-upscaled for SR, the noisy or rainy image otherwise). Paper: the IPT paper "
             "(CVPR 2021); - where it gives no number.")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
