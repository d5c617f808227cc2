"""IPT from the command line: parse the options, build the model, run the job."""
from __future__ import annotations

import logging
import os
import sys

import torch

import option
import trainer
import utility
from data.sample import sample_photos
from model import CheckpointError, build_model, load_checkpoint

log = logging.getLogger("ipt")
IN_FOLDER_SETS = ("Demo", "Sample")  # test sets restored as given, without references


def main(argv: list[str] | None = None) -> int:
    """Run the job the options describe; the exit status (0 ok, 1 failures, 2 bad options)."""
    args = option.parse_args(argv)
    if not args.test_only:
        print("main.py: error: training is not available in this version yet; "
              "evaluate with --test_only", file=sys.stderr)
        return 2
    unknown = [d for d in args.data_test if d not in IN_FOLDER_SETS]
    if unknown:
        print(f"main.py: error: --data_test {'+'.join(unknown)}: this version restores Demo "
              f"(--dir_demo) and Sample; benchmark sets are not available yet", file=sys.stderr)
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
    """Restore every test set with every selected head; 1 if any image failed."""
    task_ids = list(range(len(model.task_names))) if args.task_id is None else [args.task_id]
    settings = trainer.InferenceSettings(args.chop, args.crop_batch_size, args.self_ensemble,
                                         args.rgb_range)
    failed = 0
    for name in args.data_test:
        out_dir = os.path.join(args.save, f"results-{name}") if args.save_results else None
        if name == "Demo":
            try:
                total = trainer.count_images(args.dir_demo)
            except FileNotFoundError as e:
                log.error("--dir_demo: %s", e)
                return 1
            images = trainer.read_folder(args.dir_demo)
        else:
            images = sample_photos("test")
            total = len(images)
        if total == 0:
            log.error("--data_test %s: no images (png, jpg, bmp, tif) in %s", name, args.dir_demo)
            return 1
        log.info("%s: %d image(s), heads %s", name, total,
                 "+".join(model.task_names[t] for t in task_ids))
        done, bad = trainer.restore_images(model, images, task_ids, settings, out_dir,
                                           args.save_gt, total)
        failed += bad
        where = f", results in {out_dir}" if out_dir else " (add --save_results to write them)"
        log.info("%s: restored %d image(s)%s", name, done, where)
    if failed:
        log.error("%d image(s) could not be read; see the messages above", failed)
    log.info("log: %s", os.path.join(args.save, utility.LOG_NAME))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
