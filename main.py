"""IPT from the command line: parse the options, build the model, run the job."""
from __future__ import annotations

import logging
import os
import sys

import torch

import option
import trainer
import utility
from data.benchmark import ALL_SETS, BenchmarkError, BenchmarkSet, supports
from data.images import ImageFolder, ImageReadError
from model import CheckpointError, build_model, load_checkpoint

log = logging.getLogger("ipt")


def main(argv: list[str] | None = None) -> int:
    """Run the job the options describe; the exit status (0 ok, 1 failures, 2 bad options)."""
    args = option.parse_args(argv)
    if not args.test_only:
        print("main.py: error: training is not available in this version yet; "
              "evaluate with --test_only", file=sys.stderr)
        return 2
    unknown = [d for d in args.data_test if d not in ALL_SETS + ("Demo",)]
    if unknown:
        print(f"main.py: error: --data_test {'+'.join(unknown)}: unknown test set; known: "
              f"{', '.join(ALL_SETS)}, Demo", file=sys.stderr)
        return 2
    device = pick_device(args)
    if device is None:
        return 2
    utility.setup_logging(args.save, args.debug)
    log.info("command: %s", " ".join(sys.argv if argv is None else ["main.py", *argv]))
    given = option.training_options_given(args)
    if given:
        log.warning("training options have no effect with --test_only: %s", " ".join(given))
    torch.manual_seed(args.seed)
    model = prepare_model(args, device)
    if model is None:
        return 1
    return evaluate(args, model)


def pick_device(args) -> torch.device | None:
    """CUDA unless --cpu or none is present; None (after a message) when --precision cannot run."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.precision == "half" and device.type != "cuda":
        print("main.py: error: --precision half needs a CUDA device; drop it (or --cpu)", file=sys.stderr)
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
    log.info("model: IPT, heads %s, %s parameters, on %s", "+".join(model.task_names),
             f"{n_params:,}", device)
    model = model.to(device).eval().requires_grad_(False)
    return model.half() if args.precision == "half" else model


def evaluate(args, model: torch.nn.Module) -> int:
    """Restore Demo folders and evaluate test sets with every selected head; 1 on any failure."""
    task_ids = list(range(len(model.task_names))) if args.task_id is None else [args.task_id]
    settings = trainer.InferenceSettings(args.chop, args.crop_batch_size, args.self_ensemble,
                                         args.rgb_range)
    failed, results = 0, {}
    for name in args.data_test:
        out_dir = os.path.join(args.save, f"results-{name}") if args.save_results else None
        try:
            if name == "Demo":
                failed += restore_demo(args, model, task_ids, settings, out_dir)
            else:
                results[name] = evaluate_benchmark(args, model, name, task_ids, settings, out_dir)
        except (BenchmarkError, FileNotFoundError, ImageReadError) as e:
            log.error("%s", e)
            return 1
    if results:
        write_reports(args, model, results)
    if failed:
        log.error("%d image(s) could not be read; see the messages above", failed)
    log.info("log: %s", os.path.join(args.save, utility.LOG_NAME))
    return 1 if failed else 0


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
                       out_dir: str | None) -> dict:
    """Metrics of each selected head that ``name`` is a test set for."""
    tasks = [t for t in task_ids if supports(name, model.task_names[t])]
    if not tasks:
        heads = "+".join(model.task_names[t] for t in task_ids)
        raise BenchmarkError(f"--data_test {name} is not a test set for {heads}")
    results = {}
    for t in tasks:
        task, scale = model.task_names[t], model.scale[t]
        data = BenchmarkSet(args.dir_data, name, task, scale, args.seed)
        r = trainer.evaluate_set(model, data, t, settings, out_dir, args.n_threads)
        log.info("%s %s: PSNR %.2f dB, SSIM %.4f (Y); PSNR %.2f dB, SSIM %.4f (RGB); %d images",
                 name, task, r["psnr"], r["ssim"], r["psnr_rgb"], r["ssim_rgb"], r["n_images"])
        results[task] = r
    return results


def write_reports(args, model, results: dict) -> None:
    """RUN/metrics.json and RUN/results.md."""
    path = checkpoint_path(args)
    mode = args.chop if args.chop != "auto" else "official"
    meta = {"checkpoint": path or None, "checkpoint_sha256": utility.sha256_file(path) if path else None,
            "commit": utility.git_commit(os.path.dirname(os.path.abspath(__file__))),
            "options": utility.jsonable(vars(args)), "tiling": mode,
            "self_ensemble": args.self_ensemble}
    utility.write_json(os.path.join(args.save, "metrics.json"), {"meta": meta, "results": results})
    table = trainer.results_table(results)
    with open(os.path.join(args.save, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# Results\n\ncheckpoint: `{path or 'random weights'}`, tiling: {mode}, "
                f"self-ensemble: {args.self_ensemble}\n\n{table}")
    log.info("\n%s", table)
    log.info("metrics: %s, table: %s", os.path.join(args.save, "metrics.json"),
             os.path.join(args.save, "results.md"))


if __name__ == "__main__":
    sys.exit(main())
