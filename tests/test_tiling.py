"""Whole-image inference: the authors' forward_chop reproduced, and the faster modes."""
from __future__ import annotations

import pytest
import torch

from conftest import FIXTURE_ATOL, TileCounter
from model import restore
from model.reference_chop import reference_chop
from model.tiling import ensemble_x8


@pytest.mark.parametrize("task_id", [0, 1, 2, 3, 5])
def test_official_matches_the_authors_forward_chop(tiny_model, authors_io, task_id):
    out = restore(tiny_model, authors_io["chop_input"], task_id, "official",
                  crop_batch_size=authors_io["crop_batch_size"])
    ref = authors_io["chop_outputs"][task_id]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= FIXTURE_ATOL


def test_reference_rendition_matches_the_fixture(tiny_model, authors_io):
    with torch.no_grad():
        ref = reference_chop(lambda t: tiny_model(t, 1), authors_io["chop_input"], 3, batch=8)
    assert (ref - authors_io["chop_outputs"][1]).abs().max().item() <= FIXTURE_ATOL


class EdgeAware(torch.nn.Module):
    """A cheap stand-in for IPT's tiles (48 in, x scale out) whose output depends on where a pixel
    sits in its tile (a zero-padded blur sees the tile's border): a misplaced or misweighted tile
    shows. The tilers are tested on it where they run hundreds of tiles; IPT itself runs them
    against the authors' outputs above."""

    patch_size, scale = 48, [2, 3, 4, 1, 1, 1]

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, task_id=0):
        blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
        return torch.nn.functional.interpolate(x + self.w * blurred, scale_factor=self.scale[task_id])


@pytest.mark.parametrize("task_id,size", [(0, (256, 256)), (3, (61, 100)), (2, (48, 73))])
def test_official_equals_strip_by_strip_with_fewer_tiles(task_id, size):
    torch.manual_seed(0)
    x = torch.rand(1, 3, *size) * 255
    net = EdgeAware()
    scale = net.scale[task_id]
    counter = TileCounter(net)
    with torch.no_grad():
        ref = reference_chop(lambda t: net(t, task_id), x, scale)
    n_reference, counter.count = counter.count, 0
    out = restore(net, x, task_id, "official")
    n_ours = counter.count
    counter.close()
    assert (out - ref).abs().max().item() <= FIXTURE_ATOL
    assert n_ours < n_reference
    if size == (256, 256):
        assert (n_reference, n_ours) == (397, 361)  # 18x18 grid + 4 strips of 18 + corner


@pytest.mark.parametrize("mode", ["official", "fast"])
def test_cpu_tiles_per_call_caps_each_network_call(tiny_model, mode):
    x = torch.rand(1, 3, 100, 90) * 255
    calls: list[int] = []
    hook = tiny_model.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].shape[0]))
    try:
        capped = restore(tiny_model, x, 0, mode, crop_batch_size=64, cpu_tiles_per_call=3)
        n_capped, calls[:] = list(calls), []
        lifted = restore(tiny_model, x, 0, mode, crop_batch_size=64, cpu_tiles_per_call=64)
    finally:
        hook.remove()
    assert max(n_capped) == 3 and max(calls) > 3 and sum(n_capped) == sum(calls)
    assert (capped - lifted).abs().max().item() <= FIXTURE_ATOL
    with pytest.raises(ValueError, match="cpu_tiles_per_call"):
        restore(tiny_model, x, 0, mode, cpu_tiles_per_call=0)


def test_fast_uses_at_most_49_tiles_on_256():
    net = EdgeAware()
    counter = TileCounter(net)
    out = restore(net, torch.rand(1, 3, 256, 256) * 255, 0, "fast")
    counter.close()
    assert counter.count <= 49
    assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["official", "fast"])
def test_tilers_are_exact_on_a_pointwise_network(mode):
    """A network that acts pixel by pixel must come out unchanged by any blending."""

    class Pointwise(torch.nn.Module):
        patch_size, scale = 48, [2]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.5))

        def forward(self, x, task_id=0):
            return torch.nn.functional.interpolate(x * self.w, scale_factor=2, mode="nearest")

    net = Pointwise()
    x = torch.rand(1, 3, 70, 83) * 255
    expected = torch.nn.functional.interpolate(x * 1.5, scale_factor=2, mode="nearest")
    assert torch.allclose(restore(net, x, 0, mode), expected, atol=1e-3)


@pytest.mark.parametrize("mode", ["official", "fast"])
def test_inputs_smaller_than_a_patch_are_padded(tiny_model, mode):
    out = restore(tiny_model, torch.rand(1, 3, 30, 20) * 255, 0, mode)
    assert out.shape == (1, 3, 60, 40) and torch.isfinite(out).all()


def test_whole_mode_is_one_call_for_patch_sized_input(tiny_model, authors_io):
    out = restore(tiny_model, authors_io["input"], 4, "whole")
    assert (out - authors_io["outputs"][4]).abs().max().item() <= FIXTURE_ATOL
    with pytest.raises(ValueError, match="48x48"):
        restore(tiny_model, torch.rand(1, 3, 60, 60), 0, "whole")


def test_batches_equal_single_images(tiny_model):
    x = torch.rand(2, 3, 60, 50) * 255
    both = restore(tiny_model, x, 3, "official", crop_batch_size=5)
    one = restore(tiny_model, x[1:], 3, "official", crop_batch_size=5)
    assert (both[1:] - one).abs().max().item() <= FIXTURE_ATOL


def test_self_ensemble_is_the_mean_of_the_eight_transforms(tiny_model):
    x = torch.rand(1, 3, 48, 48) * 255
    transforms = [lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-1, -2)]
    outs = []
    with torch.no_grad():
        for transpose in (False, True):
            for f in transforms:
                v = f(x.transpose(-1, -2) if transpose else x)
                y = f(tiny_model(v, 3))  # flips are their own inverse
                outs.append(y.transpose(-1, -2) if transpose else y)
    expected = torch.stack(outs).mean(0)
    out = restore(tiny_model, x, 3, "whole", self_ensemble=True)
    assert (out - expected).abs().max().item() <= FIXTURE_ATOL


def test_ensemble_of_identity_is_identity():
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(ensemble_x8(lambda t: t, x), x)


def test_unknown_mode_is_refused(tiny_model):
    with pytest.raises(ValueError, match="tiling mode"):
        restore(tiny_model, torch.rand(1, 3, 48, 48), 0, "magic")
