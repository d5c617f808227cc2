"""Export a checkpoint out of PyTorch: .safetensors (the weights, no code) or .onnx (one head).

    python -m scripts.export RUN/model/model_latest.pt ipt_sr2.safetensors
    python -m scripts.export IPT_pretrain.pt ipt_denoise50.onnx --task denoise50 [--patch_size 48]

The format follows OUT's suffix; docs/EXPORT.md says what each file holds, where the model
options come from (the training.json beside the checkpoint, else its shapes and --num_heads),
and how the ONNX graph is checked. Exit status 0; 1 when the export fails; 2 for a bad command
line; 130 when stopped by SIGINT, SIGTERM or SIGUSR1 (OUT appears only when complete).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping

import stops  # loads no torch

if __name__ == "__main__":  # a stop while torch loads is kept; imported (by tests), nothing changes
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import option  # noqa: E402
import option_files  # noqa: E402
import option_table  # noqa: E402
import runfolder  # noqa: E402
import utility  # noqa: E402
from model import MODELS, IPTConfig, build_model, checkpoint  # noqa: E402
from model.checkpoint import read_safetensors  # noqa: E402  (by name: a test stops the export in it)
from scripts.cli import BAD_OPTION, Refusal, output_problem, run_stoppable, say  # noqa: E402
from tasks import task_scale  # noqa: E402

PROG = "export.py"
CHECKPOINT = "CHECKPOINT"  # the name of the first argument, in the usage line and in messages
SAFETENSORS, ONNX = ".safetensors", ".onnx"
FORMATS = (SAFETENSORS, ONNX)
ONNX_INPUT, ONNX_OUTPUT = "lr", "sr"  # the graph's input and output names
ONNX_BATCH = "batch"  # the name of the graph's one dynamic dimension
VERIFY_BATCH = 2  # random tiles run through ONNX Runtime and PyTorch to compare them
# Largest ONNX Runtime vs PyTorch difference (0..255 outputs) accepted: other kernels move
# outputs by float rounding (up to 0.14 for a full-size 12-layer model with random weights, 4e-4
# for a 1-layer one); a wrong weight or head moves them by tens.
ONNX_MAX_DIFF = 1.0
# The check runs hold about this many copies of the attention scores (VERIFY_BATCH x num_heads x
# tokens^2 floats) at once: ONNX Runtime's, kept in its arena, then PyTorch's scores and softmax
ATTENTION_COPIES = 3


@dataclasses.dataclass
class Source:
    """A checkpoint read, and the model options that built it."""

    path: str
    state: dict[str, Tensor]
    architecture: dict  # the record's keys and values as training.json writes them
    origin: str  # where the architecture comes from, for messages
    config: object  # the IPTConfig / RestormerConfig of the whole file


# ---- The command line --------------------------------------------------------------------
def positive(text: str) -> int:
    """An integer above 0 (argparse type)."""
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options (errors in one line, exit status 2)."""
    p = option.OptionParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", metavar=CHECKPOINT, help="the .pt (or .safetensors) file to export")
    p.add_argument("output", help="OUT.safetensors or OUT.onnx")
    p.add_argument("--task", default=None, help="the head to export to ONNX (its name, as in --tasks)")
    p.add_argument("--patch_size", type=positive, default=None,
                   help="ONNX: the tile size in LR pixels (default: the model's, 48)")
    p.add_argument("--num_heads", type=positive, default=None,
                   help="attention heads, when no training.json records them (the authors': 12)")
    p.add_argument("--tasks", default=None, help="the file's head names A+B, when no record gives them")
    return p.parse_args(argv)


def output_problem_of(a: argparse.Namespace) -> tuple[str, int] | None:
    """(why, exit status) when OUT cannot be written as the export asked for, else None."""
    suffix = os.path.splitext(a.output)[1].lower()
    if suffix not in FORMATS:
        return (f"output {a.output}: give a file name ending in {' or '.join(FORMATS)} (the format "
                f"follows the suffix)", BAD_OPTION)
    problem = output_problem(a.output, "ipt" + suffix)
    if not problem and suffix == SAFETENSORS and (a.task or a.patch_size):
        return (f"--task and --patch_size choose what goes into an ONNX file; a {SAFETENSORS} file "
                f"holds every head", BAD_OPTION)
    return problem


# ---- The checkpoint and its model options ------------------------------------------------
def read_source(path: str, num_heads: int | None, tasks: str | None) -> Source:
    """The checkpoint's weights and the options that built its model: its record's (training.json,
    or a .safetensors file's metadata), else those its shapes give away plus --num_heads."""
    state, _ = checkpoint.read_checkpoint(path, CHECKPOINT)
    architecture, origin = (recorded_architecture(path, num_heads, tasks)
                            or (inferred_architecture(path, state, num_heads), "its weights' shapes"))
    if num_heads is not None:
        architecture["num_heads"] = num_heads
    if tasks:
        architecture["tasks"] = named_heads(tasks, state, path)
    if architecture.get("model", "ipt") == "ipt" and not architecture.get("tasks"):
        architecture["tasks"] = "+".join(checkpoint.head_names(state, path))  # the six-task order by scale
    return Source(path, state, architecture, origin, config_of(architecture, origin))


def recorded_architecture(path: str, num_heads: int | None, tasks: str | None) -> tuple[dict, str] | None:
    """(the architecture of the checkpoint's record, the record's name): the training.json beside
    it, or a .safetensors file's metadata; None without one. The keys a record may not set are
    said and left out; a --num_heads or --tasks that contradicts the record is refused."""
    try:
        record, origin = option_files.pretrain_record(path)
    except utility.RecordError as e:
        raise Refusal(f"{path}: {e}") from None
    if record is None:
        return None
    written = record["architecture"]
    try:
        taken, ignored = option_files.recorded_architecture(written, origin)
    except ValueError as e:
        raise Refusal(str(e)) from None
    if contradiction := option_files.record_contradiction(
            taken, {} if num_heads is None else {"num_heads": num_heads}, origin):
        raise Refusal(contradiction, BAD_OPTION)
    if tasks and "tasks" in taken and head_list(tasks) != head_list(taken["tasks"]):
        raise Refusal(f"--tasks {tasks} contradicts {origin}, which records tasks {taken['tasks']} "
                      f"for these weights: leave --tasks out or give {taken['tasks']}", BAD_OPTION)
    for key in ignored:
        print(f"{PROG}: {origin}: ignored its key {key!r} (a record may only give the options that "
              f"shape the model); it is not exported", file=sys.stderr)
    return {key: written[key] for key in taken}, origin


def inferred_architecture(path: str, state: Mapping[str, Tensor], num_heads: int | None) -> dict:
    """The options an IPT state_dict's shapes give away, with --num_heads (which they do not)."""
    architecture = checkpoint.ipt_architecture_of(state)
    if architecture is None:
        raise Refusal(f"{path}: no {utility.TRAINING_RECORD} beside it, and its shapes do not read "
                      f"as IPT's: export a checkpoint of a training run (its record gives the model "
                      f"options)")
    if num_heads is None:
        width = architecture["n_feats"] * architecture["patch_dim"] ** 2
        raise Refusal(f"{path}: no {utility.TRAINING_RECORD} beside it, and the weights do not "
                      f"record the number of attention heads: give --num_heads (a divisor of the "
                      f"token width {width}; the authors' models use {checkpoint.AUTHORS_NUM_HEADS})",
                      BAD_OPTION)
    return architecture


def head_list(tasks: str) -> list[str]:
    """The head names of A+B."""
    return [name.strip() for name in tasks.split("+")]


def named_heads(tasks: str, state: Mapping[str, Tensor], path: str) -> str:
    """--tasks as A+B, checked by main.py's rule for --tasks with --scale (option.py): distinct
    task names, one per head, each of its head's scale (the scales read off the heads' tails)."""
    names, scales = head_list(tasks), checkpoint.checkpoint_scales(state)
    try:
        implied = [task_scale(name) if option.TASK_NAME.match(name) else None for name in names]
    except ValueError:  # sr1: no task
        implied = []
    if implied != scales or len(set(names)) != len(names):
        raise Refusal(f"--tasks {tasks}: {path}'s heads have the scales {'+'.join(map(str, scales))} "
                      f"(read off their tails): give one name per head, in order, each of its "
                      f"head's scale (sr<s> for s; derain, denoise<sigma> or mim for 1)", BAD_OPTION)
    return "+".join(names)


def config_of(architecture: dict, origin: str) -> object:
    """The IPTConfig / RestormerConfig of an architecture record (checked by option.py's rules)."""
    try:
        taken, _ = option_files.recorded_architecture(architecture, origin)
    except ValueError as e:
        raise Refusal(str(e)) from None
    _, config_type = MODELS[taken.pop("model", "ipt")]
    fields = {f.name for f in dataclasses.fields(config_type)}
    values = {}
    for key, value in taken.items():
        name = "task_names" if key == "tasks" else key
        if name not in fields:
            continue
        if key in option_table.LIST_SEPARATORS:
            items = [v.strip() for v in str(value).split(option_table.LIST_SEPARATORS[key])]
            try:
                value = items if key == "tasks" else [int(v) for v in items]
            except ValueError:
                raise Refusal(f"{origin}: {key} {value!r} is not numbers joined by "
                              f"{option_table.LIST_SEPARATORS[key]}") from None
        values[name] = value
    try:
        config = config_type(**values)
        if isinstance(config, IPTConfig) and config.task_names is not None \
                and len(config.task_names) != len(config.scale):
            raise ValueError(f"{len(config.task_names)} task names for {len(config.scale)} scales")
    except (TypeError, ValueError) as e:
        raise Refusal(f"{origin}: the model options do not build a network: {e}") from None
    return config


def built(config: object, origin: str) -> nn.Module:
    """The network of a config, in eval mode (a config that cannot build one: a Refusal)."""
    try:
        return build_model(config).eval()
    except ValueError as e:
        raise Refusal(f"{origin}: the model options do not build a network: {e}") from None


# ---- .safetensors ------------------------------------------------------------------------
def export_safetensors(source: Source, out: str) -> str:
    """Write the state_dict and the architecture to ``out``; read it back bit for bit before it
    takes its name. Returns a description for the final line."""
    model = built(source.config, source.origin)
    checkpoint.check_fits(model, source.state, source.path)  # the metadata must describe these weights
    checkpoint.check_values(model, source.state, source.path)

    def write(tmp: str) -> None:
        checkpoint.write_safetensors(source.state, tmp, source.architecture)
        again, _ = read_safetensors(tmp)  # by its format: the temporary's name ends in .tmp
        if not same_tensors(again, source.state):
            raise Refusal(f"{out}: the file written does not read back as {source.path}")

    runfolder.atomic_write(out, write, durable=True)
    return f"{len(source.state)} tensors, model options from {source.origin}"


def same_tensors(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Whether two state_dicts have the same keys, dtypes, shapes and bytes (compared as uint8:
    NaN == NaN, -0.0 != 0.0, as on disk)."""
    def raw(tensor: Tensor) -> Tensor:
        return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(raw(a[k]), raw(b[k]))
        for k in a)


# ---- .onnx -------------------------------------------------------------------------------
def pick_head(source: Source, task: str | None) -> tuple[int, str]:
    """(index, name) of the head to export: the only one, or --task's."""
    names = list(source.config.task_names)
    if task is None:
        if len(names) > 1:
            raise Refusal(f"{source.path} has {len(names)} heads ({'+'.join(names)}): an ONNX file "
                          f"holds one: give --task NAME", BAD_OPTION)
        return 0, names[0]
    if task not in names:
        raise Refusal(f"--task {task}: {source.path} has the head(s) {'+'.join(names)}, none of "
                      f"them {task}", BAD_OPTION)
    return names.index(task), task


def tile_size(config: IPTConfig, patch_size: int | None) -> int:
    """The ONNX tile: --patch_size, which the weights allow only at the model's own size unless
    they have neither positions nor task queries (then any multiple of patch_dim)."""
    if patch_size is None or patch_size == config.patch_size:
        return config.patch_size
    if not (config.no_pos and config.no_mlp):
        raise Refusal(f"--patch_size {patch_size}: this model's position encoding and task queries "
                      f"are sized for {config.patch_size}x{config.patch_size} tiles: give "
                      f"--patch_size {config.patch_size} or leave it out", BAD_OPTION)
    if patch_size % config.patch_dim:
        raise Refusal(f"--patch_size {patch_size}: must be a multiple of the model's patch_dim "
                      f"{config.patch_dim}", BAD_OPTION)
    check_attention_memory(config, patch_size)
    return patch_size


def check_attention_memory(config: IPTConfig, patch_size: int) -> None:
    """Refuse a tile whose attention scores in the check runs cannot fit in the memory available
    (as option.py's _check_memory does for main.py), before anything is built."""
    available = utility.available_memory()
    per_token_pair = ATTENTION_COPIES * VERIFY_BATCH * config.num_heads * option.FLOAT_BYTES
    tokens = (patch_size // config.patch_dim) ** 2
    if available is None or tokens ** 2 * per_token_pair <= available:
        return
    largest = math.isqrt(math.isqrt(available // per_token_pair)) * config.patch_dim  # tokens^2 fit
    raise Refusal(f"--patch_size {patch_size}: the attention scores of the {VERIFY_BATCH} tiles the "
                  f"graph is checked on would not fit in the {available / option.GIB:.1f} GiB of "
                  f"memory available: give --patch_size {largest} or less", BAD_OPTION)


def export_onnx(source: Source, out: str, task: str | None, patch_size: int | None,
                stop: stops.StopSignals | None = None) -> str:
    """Write one head on fixed tiles to ``out`` as ONNX (dynamic batch), checked with onnx's
    checker and against PyTorch with ONNX Runtime. Returns a description for the final line.
    A stop ``stop`` received is raised before ``out`` takes its name, even when torch.onnx
    swallowed its KeyboardInterrupt (it tries its next way of capturing the network)."""
    config = source.config
    if not isinstance(config, IPTConfig):
        raise Refusal(f"{source.path} is a {type(config).__name__[:-len('Config')]} model: ONNX "
                      f"export is for IPT; export it to {SAFETENSORS}")
    index, name = pick_head(source, task)
    tile = tile_size(config, patch_size)
    several = len(config.scale) > 1
    single = dataclasses.replace(config, scale=[config.scale[index]], task_names=[name],
                                 num_queries=1 if several else config.num_queries,
                                 patch_size=tile, attention="math", dropout_rate=0.0)
    model = built(single, source.origin)
    checkpoint.load_state(model, source.state, source.path, name if several else None,
                          config.task_names if several else None)
    network = model.requires_grad_(False).eval()  # one head: forward(x) runs it
    example = torch.rand(VERIFY_BATCH, config.n_colors, tile, tile) * config.rgb_range
    program = onnx_program(network, example)
    program.model.metadata_props.update({
        checkpoint.ARCHITECTURE_METADATA: json.dumps({
            **source.architecture, "scale": str(single.scale[0]), "tasks": name,
            "num_queries": single.num_queries, "patch_size": tile}),
        "ipt_task": name, "ipt_scale": str(single.scale[0]), "ipt_tile": str(tile),
        "ipt_rgb_range": str(config.rgb_range)})
    difference: list[float | None] = [None]

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)
        check_onnx(tmp)
        difference[0] = compare_with_torch(tmp, network, example)
        if stop is not None and stop.received is not None:
            raise stops.Interrupted(stop.received)

    runfolder.atomic_write(out, write)
    compared = "onnxruntime not installed: not run" if difference[0] is None else \
        f"ONNX Runtime vs PyTorch on {VERIFY_BATCH} random tiles: max |diff| {difference[0]:.3g}"
    return (f"head {name} (x{single.scale[0]}), {tile}x{tile} tiles in, "
            f"{tile * single.scale[0]}x{tile * single.scale[0]} out, dynamic batch; {compared}")


def onnx_program(network: nn.Module, example: Tensor):
    """torch.onnx's dynamo export of ``network`` on ``example``, its batch dimension dynamic."""
    batch = torch.export.Dim(ONNX_BATCH, min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            return torch.onnx.export(network, (example,), dynamo=True, verbose=False,
                                     input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                     dynamic_shapes={"x": {0: batch}})
    except Exception as e:  # torch.onnx.errors.*, torch.export's errors
        line = next((t for t in str(e).splitlines() if t.strip()), type(e).__name__)
        raise Refusal(f"torch.onnx could not export the network: {line}") from None


def check_onnx(path: str) -> None:
    """onnx's checker on the written file (a failure: a Refusal)."""
    import onnx
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape inference errors
        raise Refusal(f"the ONNX graph fails onnx's checker: {str(e).splitlines()[0]}") from None


def compare_with_torch(path: str, network: nn.Module, example: Tensor) -> float | None:
    """The largest |ONNX Runtime - PyTorch| on ``example`` (None without onnxruntime); a Refusal
    when it is above ONNX_MAX_DIFF or not finite."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: example.numpy()})[0])
    with torch.no_grad():
        want = network(example)
    difference = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    if not difference <= ONNX_MAX_DIFF:
        raise Refusal(f"ONNX Runtime's output differs from PyTorch's by {difference:.3g} (over "
                      f"{ONNX_MAX_DIFF}): the graph is not written")
    return difference


# ---- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Export; the exit status (0, 1 failed, 2 bad command line, 130 stopped)."""
    a = parse(argv)
    if problem := output_problem_of(a):
        return say(PROG, *problem)
    started, what = time.perf_counter(), []

    def export(stop: stops.StopSignals) -> int:
        source = read_source(a.checkpoint, a.num_heads, a.tasks)
        if a.output.lower().endswith(SAFETENSORS):
            what.append(export_safetensors(source, a.output))
        else:
            what.append(export_onnx(source, a.output, a.task, a.patch_size, stop))
        return 0

    status = run_stoppable(PROG, export, lambda signum: (f"{stops.signal_name(signum)} received: "
                           f"stopped; {a.output} not written"),
                           (checkpoint.CheckpointError, runfolder.SaveError))
    if status == 0:
        print(f"{PROG}: wrote {a.output} ({os.path.getsize(a.output):,} bytes) in "
              f"{time.perf_counter() - started:.1f} s: {what[0]}")
    return status


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
