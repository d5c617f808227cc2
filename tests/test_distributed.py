"""torchrun with two CPU processes (gloo) against one process fed both ranks' micro-batches."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import trainer
from conftest import ROOT
from data.sample import sample_photos
from data.stream import PairStream
from model import build_model
from option import parse_args, settings
from rank_probe import NAN_MICRO

STEPS = 4
OPTIONS = ["--cpu", "--scale", "2+1", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
           "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
           "--n_threads", "0", "--optimizer", "SGD", "--lr", "1e-3", "--max_steps", str(STEPS), "--seed", "3"]


def both_ranks(args):
    """Micro-batches k: rank 0's and rank 1's micro-batch k of a 2-process run, concatenated."""
    photos = sample_photos("train")
    streams = [PairStream(photos, args.task_names, args.batch_size, args.patch_size, args.seed,
                          rank=r, world_size=2, accumulate=args.accumulate) for r in (0, 1)]

    def batches(start):
        starts = (iter(s.with_start(start * args.accumulate)) for s in streams)
        for parts in zip(*starts, strict=False):
            assert parts[0]["task_id"] == parts[1]["task_id"]  # one task per step on every rank
            yield {"lr": torch.cat([p["lr"] for p in parts]), "hr": torch.cat([p["hr"] for p in parts]),
                   "task_id": parts[0]["task_id"]}

    return batches, streams[0]


def two_ranks(*program: str) -> None:
    """Run ``program`` (a script and its arguments) as a two-process CPU torchrun job; fail unless
    it ends well."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *program]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "address already in use" in result.stderr.lower():
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)  # the free port torchrun picked was taken meanwhile
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_ranks_equal_one_process_fed_both_and_sync_once_a_step(tmp_path):
    """Two torchrun ranks with --ema_decay and --accumulate 2 against one process fed both ranks'
    micro-batches: the same weights and the same average. Rank 1's loss is NaN at one micro-batch:
    both ranks skip that step, as the one process does. Each rank averages its own weights,
    with no communication, to the same average, and DDP all-reduces the gradients on a step's last
    micro-batch only (tests/rank_probe.py counts them per micro-batch on every rank)."""
    run, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    options = [*OPTIONS, "--ema_decay", "0.9", "--accumulate", "2"]
    two_ranks(os.path.join(ROOT, "tests", "rank_probe.py"), str(probes), *options, "--save", str(run))
    ranks = [torch.load(probes / f"rank.{r}.pt", weights_only=True) for r in (0, 1)]
    average = ranks[0]["ema"]
    assert all(torch.equal(average[k], ranks[1]["ema"][k]) for k in average)
    delivered = torch.load(run / "model" / "model_latest.pt", weights_only=True)
    assert delivered.keys() == average.keys() and all(torch.equal(delivered[k], average[k]) for k in average)
    raw = torch.load(run / "state.pt", weights_only=True)["model"]
    assert max(float((raw[k].float() - average[k].float()).abs().max()) for k in raw) > 0
    for probe in ranks:
        assert probe["micro"] == list(range(2 * STEPS))
        assert [n for m, n in zip(probe["micro"], probe["reduces"], strict=True) if m % 2 == 0] == [0] * STEPS
        assert all(n > 0 for m, n in zip(probe["micro"], probe["reduces"], strict=True) if m % 2 == 1)
    assert json.loads((run / "model" / "training.json").read_text())["step"] == STEPS
    assert torch.load(run / "state.pt", weights_only=True)["progress"]["nonfinite_total"] == 1

    args = parse_args([*options, "--save", str(tmp_path / "single")])
    torch.manual_seed(args.seed)
    model = build_model(settings(args).model)  # the same initial weights as main.py builds
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    batches, stream = both_ranks(args)
    assert len({stream.task_of(k) for k in range(2 * STEPS)}) >= 2  # at least two tasks drawn
    single = trainer.Trainer(settings(args).train, model, batches, None, STEPS, 1)
    micro_loss = single._micro_loss  # NaN where rank 1's was: the mean over both ranks is NaN
    nan = {NAN_MICRO: float("nan")}
    single._micro_loss = lambda batch, micro: micro_loss(batch, micro) * nan.get(micro, 1.0)
    assert single.fit() == 0 and single.progress.nonfinite_total == 1
    for ddp, one in ((raw, model.state_dict()), (delivered, single.ema.module.state_dict())):
        assert max((ddp[k].float() - one[k].float()).abs().max().item() for k in one) <= 1e-5
    moved = max((raw[k].float() - initial[k].float()).abs().max().item() for k in initial)
    assert moved > 1e-3  # training changed the weights, so the comparison is not vacuous
