"""Load the authors' checkpoints (and ours) strictly, and say what differs when they do not fit."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

import records
import utility
from tasks import default_task_names, task_scale

from .ipt import RGB_MEAN
from .mim import MASK_TOKEN_KEY, mim_heads

WRAPPER_KEYS = ("state_dict", "model", "params")  # dict keys that may hold the weights
MODULE_PREFIX = "module."  # written by DataParallel / DistributedDataParallel
PER_HEAD = re.compile(r"^(head|tail)\.(\d+)\.(.*)$")
QUERY_KEY = "body.query_embed.weight"  # one row per task query
ENCODER_LAYER = re.compile(r"^body\.encoder\.layers\.(\d+)\.")
AUTHORS_NUM_HEADS = 12
HASH_BLOCK = 1 << 20  # bytes hashed at a time
SAFETENSORS_SUFFIX = ".safetensors"
ARCHITECTURE_METADATA = "ipt_architecture"  # metadata key: the JSON of training.json's architecture

log = logging.getLogger("ipt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str, argument: str = "--pretrain") -> tuple[dict[str, Tensor], str]:
    """(the bare state_dict of a checkpoint file, the SHA-256 of the bytes it was read from): the
    file is opened once, hashed and loaded from that one handle, so a file replaced meanwhile
    cannot give the hash of other bytes than the weights. ``argument``: the command-line argument
    that gave ``path``, named by the message of a path that is no file."""
    if is_safetensors(path):
        state, sha256 = read_safetensors(path, argument)
        return unwrap_state_dict(state, path), sha256
    with _open_regular(path, argument) as f:
        try:
            digest = hashlib.sha256()  # hashlib.file_digest needs Python 3.11
            for block in iter(lambda: f.read(HASH_BLOCK), b""):
                digest.update(block)
            f.seek(0)
            with utility.quiet_pickle_notes():
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files, non-tensor payloads
            raise CheckpointError(f"cannot read checkpoint {path!r}: {utility.load_failure(e)}") from None
    return unwrap_state_dict(obj, path), digest.hexdigest()


# ---- .safetensors: a JSON header and raw little-endian tensor bytes, nothing that could run code
def is_safetensors(path: str) -> bool:
    """Whether a checkpoint path names a .safetensors file (read as one, not with torch.load)."""
    return path.lower().endswith(SAFETENSORS_SUFFIX)


def read_safetensors(path: str, argument: str = "--pretrain") -> tuple[dict[str, Tensor], str]:
    """(the tensors of a .safetensors file, the SHA-256 of its bytes): the file is read once, its
    bytes hashed, and those very bytes parsed by the safetensors library, which checks the header
    against them (offsets, sizes, dtypes, metadata of text to text) before it allocates a tensor;
    a damaged file is a CheckpointError (``argument``: as ``read_checkpoint``'s)."""
    from safetensors.torch import load

    with _open_regular(path, argument) as f:
        data = f.read()
    try:
        state = load(data)
    except Exception as e:  # SafetensorError (a damaged header or body), or one the binding raises
        raise _damaged(path, utility.last_line(e)[:160]) from None
    return state, hashlib.sha256(data).hexdigest()


def read_safetensors_metadata(path: str) -> dict[str, str]:
    """The text metadata of a .safetensors file's header ({} when it has none); CheckpointError
    when the file is missing, not a regular file, or damaged (the library checks the header
    against the file; the tensors themselves are not read)."""
    from safetensors import safe_open

    _open_regular(path).close()
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except Exception as e:  # SafetensorError, or one the binding raises for a bad header
        raise _damaged(path, utility.last_line(e)[:160]) from None
    found = records.problem(metadata, records.SAFETENSORS_METADATA)
    if found:
        raise _damaged(path, f"its metadata: {found}")
    return metadata


def _open_regular(path: str, argument: str = "--pretrain"):
    """``path`` opened for reading when it is a regular file (a FIFO would hang the read)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (check {argument})")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a file (give a .pt or .safetensors file "
                              f"as {argument})")
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from None


def _damaged(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {path!r}: not a valid safetensors file: {why}")


def write_safetensors(state: Mapping[str, Tensor], path: str, architecture: dict | None = None) -> None:
    """``state`` as a .safetensors file at ``path`` (the keys as given; ``architecture``, the
    options that built the model, as JSON in the metadata key ``ipt_architecture``).

    The library lays out the bytes; Python's file I/O writes them, because the library's own
    ``save_file`` reports a full disk as a SafetensorError, not the OSError that
    ``runfolder.atomic_write`` turns into a SaveError, and renames a 0600 temporary over ``path``."""
    from safetensors.torch import save  # only writing needs the package

    tensors, seen = {}, set()
    for key, value in state.items():  # contiguous CPU tensors that share no memory, as it needs
        value = value.detach().cpu().contiguous()
        if value.numel() and value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    metadata = {"format": "pt"}
    if architecture is not None:
        metadata[ARCHITECTURE_METADATA] = json.dumps(architecture)
    data = save(tensors, metadata=metadata)
    with open(path, "wb") as f:
        f.write(data)


def unwrap_state_dict(obj: object, path: str = "<checkpoint>") -> dict[str, Tensor]:
    """The tensors of a bare state_dict or of one wrapped under state_dict/model/params."""
    if isinstance(obj, Mapping) and set(records.STATE["required"]) <= set(obj):
        raise CheckpointError(f"{path!r} is a training state, not weights: give its run's "
                              f"model/model_latest.pt (the moving average under --ema_decay), or "
                              f"continue the run with --resume")
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path!r} holds no state_dict (expected a dict of tensors, or one "
                              f"under {', '.join(WRAPPER_KEYS)})")
    if all(k.startswith(MODULE_PREFIX) for k in obj):
        obj = {k[len(MODULE_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def checkpoint_scales(state: Mapping[str, Tensor]) -> list[int]:
    """The scale of each head in a state_dict, read from its tail's shapes (0: unreadable)."""
    heads = sorted({int(m.group(2)) for k in state if (m := PER_HEAD.match(k))})
    return [_tail_scale(state, i) or 0 for i in heads]


def select_heads(state: Mapping[str, Tensor], kept: list[int]) -> dict[str, Tensor]:
    """A state_dict with only the heads, tails and query rows ``kept``, renumbered in that order."""
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for key, value in state.items():
        m = PER_HEAD.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) in renumber:
            out[f"{m.group(1)}.{renumber[int(m.group(2))]}.{m.group(3)}"] = value
    if QUERY_KEY in state:
        out[QUERY_KEY] = state[QUERY_KEY][kept]
    return out


def head_names(state: Mapping[str, Tensor], path: str, file_tasks: Sequence[str] | None = None) -> list[str]:
    """The checkpoint's head names: ``file_tasks`` when they fit its heads, else the six-task order."""
    scales = checkpoint_scales(state)
    if file_tasks and len(file_tasks) == len(scales):
        return list(file_tasks)
    try:
        return default_task_names(scales)
    except ValueError:
        raise CheckpointError(f"{path!r} has {len(scales)} heads of scales "
                              f"{'+'.join(map(str, scales))} that cannot be named from their scales: "
                              f"give their names with --tasks") from None


def strip_mim(state: Mapping[str, Tensor], task_names: Sequence[str]) -> dict[str, Tensor]:
    """A checkpoint without its MIM entries: the mim heads, tails and query rows and the mask
    token go; the other heads are renumbered in order (the authors' code loads the result).
    ValueError when the names do not fit the heads: their count, or a head's scale."""
    n_heads = len(checkpoint_scales(state))
    if len(task_names) != n_heads:
        raise ValueError(f"the task names ({'+'.join(task_names)}) do not match the checkpoint's "
                         f"{n_heads} heads")
    wrong = [w for i, name in enumerate(task_names) if (w := _misnamed(state, i, name))]
    if wrong:
        raise ValueError(f"the head names {'+'.join(task_names)} contradict the file's shapes: "
                         f"{'; '.join(wrong)}")
    drop = set(mim_heads(task_names))
    out = select_heads(state, [i for i in range(n_heads) if i not in drop])
    out.pop(MASK_TOKEN_KEY, None)
    return out


def _tail_scale(state: Mapping[str, Tensor], index: int) -> int | None:
    """The factor head ``index``'s tail upsamples by, from its PixelShuffle convolutions (each
    has n_feats * r^2 output channels for a factor r; a scale-1 tail has none); None when a
    convolution has no such shape."""
    scale, k = 1, 0
    while (weight := state.get(f"tail.{index}.0.{k}.weight")) is not None:
        if weight.dim() != 4 or weight.shape[1] == 0 or weight.shape[0] % weight.shape[1]:
            return None
        ratio = weight.shape[0] // weight.shape[1]
        factor = math.isqrt(ratio)
        if factor < 2 or factor * factor != ratio:
            return None
        scale, k = scale * factor, k + 2  # each convolution is followed by its PixelShuffle
    return scale


def _misnamed(state: Mapping[str, Tensor], index: int, name: str) -> str:
    """Why head ``index`` cannot be the task ``name`` by its tail's shapes ('' when it can)."""
    try:
        want = task_scale(name)
    except ValueError as e:
        return f"head {index}: {e}"
    have = _tail_scale(state, index)
    if have == want:
        return ""
    shape = "an unreadable upsampler" if have is None else \
        "no upsampler (scale 1)" if have == 1 else f"an x{have} upsampler"
    return f"head {index} ({name}, scale {want}) has {shape}"


def resolve_task(state: Mapping[str, Tensor], task: int | str, path: str,
                 file_tasks: Sequence[str] | None = None) -> int:
    """The checkpoint's head index for a task given by index or by name (``file_tasks``, else
    the six-task order)."""
    scales = checkpoint_scales(state)
    if isinstance(task, int):
        if not 0 <= task < len(scales):
            raise CheckpointError(f"{path!r} has {len(scales)} heads; task index {task} is out of range")
        return task
    names = head_names(state, path, file_tasks)
    if task not in names:
        raise CheckpointError(f"{path!r} has heads {'+'.join(names)}; none is {task!r}")
    return names.index(task)


def load_checkpoint(model: nn.Module, path: str, task: int | str | None = None,
                    file_tasks: Sequence[str] | None = None, argument: str = "--pretrain") -> str:
    """Load ``path`` into ``model`` strictly; a multi-head file fills a single-head model by task
    (the file's heads named by ``file_tasks`` when given). A mim head's mask token is dropped
    when the model has none. Returns the SHA-256 of the bytes loaded (``argument``: the option
    that named ``path``, for the message of a missing file)."""
    state, sha256 = read_checkpoint(path, argument)
    load_state(model, state, path, task, file_tasks)
    return sha256


def load_state(model: nn.Module, state: Mapping[str, Tensor], path: str,
               task: int | str | None = None, file_tasks: Sequence[str] | None = None) -> None:
    """Load the state_dict read from ``path`` into ``model`` as ``load_checkpoint`` does."""
    n_model = len(getattr(model, "head", [None]))
    n_file = len(checkpoint_scales(state))
    own_task = getattr(model, "task_names", [None])[0]
    if n_model == 1 and task is None and file_tasks and len(file_tasks) == n_file \
            and own_task not in file_tasks:
        raise CheckpointError(f"{path!r} has the head(s) {'+'.join(file_tasks)}, none of them "
                              f"{own_task}: to train {own_task} from its body, start the head from "
                              f"one of them (--init_from NAME) or at random (--init_from none)")
    if n_model == 1 and n_file > 1:
        task = model.task_names[0] if task is None else task
        state = select_heads(state, [resolve_task(state, task, path, file_tasks)])
        if MASK_TOKEN_KEY not in model.state_dict():
            state.pop(MASK_TOKEN_KEY, None)
    elif task is not None and n_model != n_file:
        raise CheckpointError(f"task={task!r} selects from a multi-head file into a single-head "
                              f"model, but the model has {n_model} heads and {path!r} {n_file}")
    _load_strictly(model, state, path)


def _load_strictly(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """``state`` into ``model`` once it fits its keys and shapes and holds finite values."""
    check_fits(model, state, path)
    check_values(model, state, path)
    model.load_state_dict(state, strict=True)


def load_body(model: nn.Module, path: str, init_from: str,
              file_tasks: Sequence[str] | None = None) -> list[str]:
    """Load the body of ``path`` into a single-head model; its head, tail and query come from
    the file's head ``init_from`` where their shapes fit (an x2 tail takes a scale-1 tail's last
    convolution), the rest keep their initial values ('none': all of them). Returns those keys."""
    state, _ = read_checkpoint(path)
    own = model.state_dict()
    if init_from == "none":
        picked = {k: v for k, v in state.items() if not _per_task(k)}
    else:
        picked = select_heads(state, [_init_head(state, init_from, path, file_tasks)])
    fitting = {k: v for k, v in picked.items()  # a mask token the model lacks is dropped here
               if not _per_task(k) or (k in own and own[k].shape == v.shape)}
    initial = [k for k in own if _per_task(k) and k not in fitting]
    _load_strictly(model, {**fitting, **{k: own[k] for k in initial}}, path)
    return initial


def _init_head(state: Mapping[str, Tensor], init_from: str, path: str,
               file_tasks: Sequence[str] | None) -> int:
    """The index of the file's head ``init_from``: by the file's head names (``file_tasks`` when
    they count its heads, else the six-task order), or, for a one-head file of unknown name, its
    head when its scale is ``init_from``'s; CheckpointError when there is no such head."""
    n_heads = len(checkpoint_scales(state))
    if file_tasks and len(file_tasks) == n_heads:
        if init_from not in file_tasks:
            raise CheckpointError(f"{path!r} has heads {'+'.join(file_tasks)}; none is "
                                  f"{init_from!r}: give --init_from one of them, or none")
        index = list(file_tasks).index(init_from)
        wrong = _misnamed(state, index, init_from)
        if wrong:
            raise CheckpointError(f"{path!r}: its head names {'+'.join(file_tasks)} contradict "
                                  f"its shapes: {wrong}; check the training.json beside it")
        return index
    if n_heads != 1:
        return resolve_task(state, init_from, path, file_tasks)
    wrong = _misnamed(state, 0, init_from)
    if wrong:  # the one head's name is unknown: only its scale can say which it is not
        raise CheckpointError(f"{path!r} has one head, of unknown name (no training.json beside "
                              f"it): {wrong}, so it is not {init_from!r}; give --init_from a head "
                              f"of its scale, or none")
    return 0


def _per_task(key: str) -> bool:
    """Whether a key belongs to one task (a head, a tail, the query table, the mask token)."""
    return bool(PER_HEAD.match(key)) or key in (QUERY_KEY, MASK_TOKEN_KEY)


def check_values(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Refuse NaN or infinite weights, naming the keys; log the keys whose dtype is converted."""
    bad = utility.nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"checkpoint {path!r} holds NaN or infinite values in {len(bad)} "
                              f"tensor(s): {_shorten(bad)}; it cannot restore images")
    own = model.state_dict()
    converted = [f"{k} ({state[k].dtype} -> {own[k].dtype})" for k in state
                 if state[k].dtype != own[k].dtype]
    if converted:
        log.warning("checkpoint %s: %d tensor(s) converted to the model's dtype: %s", path,
                    len(converted), _shorten(converted))


def check_fits(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys, with hints."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or misshaped):
        return
    lines = [f"checkpoint {path!r} does not fit the model built from the options:"]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in misshaped]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            lines.append(f"  {title} keys ({len(items)}): {_shorten(items)}")
    differing = missing + unexpected + misshaped
    hints = [option for pattern, option in HINTS if any(re.search(pattern, k) for k in differing)]
    if not set(own) & set(state):  # every key differs: the other architecture's file, or no model's
        hints = ["--model (the file shares no key with this network)"]
    if hints:
        lines.append("  options that probably differ: " + ", ".join(hints))
    read_off = ipt_options_of(state)
    if read_off:
        lines.append(f"  the file's shapes say: {read_off}")
    raise CheckpointError("\n".join(lines))


def ipt_options_of(state: Mapping[str, Tensor]) -> str:
    """The IPT options an IPT state_dict's shapes give away, as a command-line fragment ('' for
    another network). --num_heads leaves no trace in the weights: the fragment says so."""
    arch = ipt_architecture_of(state)
    if arch is None:
        return ""
    words = [f"--{key} {arch[key]}" for key in ("scale", "n_feats", "num_layers", "patch_dim", "patch_size")
             if key in arch]
    words += ["--no_mlp"] if arch["no_mlp"] else [f"--num_queries {arch['num_queries']}"]
    words += [f"--{key}" for key in ("no_pos", "no_norm") if arch[key]]
    return (" ".join(words) + f" (and --num_heads, which the weights do not record: a divisor "
            f"of the token width {arch['n_feats'] * arch['patch_dim'] ** 2}; the authors' models "
            f"use {AUTHORS_NUM_HEADS})")


def ipt_architecture_of(state: Mapping[str, Tensor]) -> dict | None:
    """The architecture record (training.json's keys and value types) that an IPT state_dict's
    shapes give away: all but num_heads and pos_every, which leave no trace in the weights (the
    record says neither). None for another network, or shapes that do not read as IPT's."""
    head, bias = state.get("head.0.0.weight"), state.get("sub_mean.bias")
    layers = {int(m.group(1)) for k in state if (m := ENCODER_LAYER.match(k))}
    attn = state.get(f"body.encoder.layers.{min(layers)}.self_attn.in_proj_weight") if layers else None
    if head is None or attn is None or bias is None or head.dim() != 4 or attn.dim() != 2 \
            or bias.shape != (len(RGB_MEAN),) or not head.shape[0]:
        return None
    n_feats, dim = head.shape[0], attn.shape[1]
    patch_dim = math.isqrt(dim // n_feats)
    scales = checkpoint_scales(state)
    if not patch_dim or n_feats * patch_dim ** 2 != dim or 0 in scales:
        return None
    positions, query = state.get("body.position_encoding.pe.weight"), state.get(QUERY_KEY)
    if (positions is not None and positions.dim() != 2) or (query is not None and query.dim() != 2):
        return None
    tokens = positions.shape[0] if positions is not None else \
        query.shape[1] // dim if query is not None else None
    arch = {"model": "ipt", "scale": "+".join(map(str, scales)), "n_feats": n_feats,
            "num_layers": len(layers), "patch_dim": patch_dim,
            "num_queries": query.shape[0] if query is not None else len(scales),
            "no_mlp": query is None, "no_pos": positions is None,
            "no_norm": f"body.encoder.layers.{min(layers)}.norm1.weight" not in state}
    rgb_range = -float(bias[0]) / RGB_MEAN[0]  # MeanShift's bias is -rgb_range x the mean
    if math.isfinite(rgb_range):  # else the default; loading refuses the NaN weights
        arch["rgb_range"] = round(rgb_range)
    if tokens is not None:  # else any multiple of patch_dim fits the weights
        arch["patch_size"] = math.isqrt(tokens) * patch_dim
    return arch


HINTS = (  # (pattern in a differing key, option that shapes it)
    (r"^(head|tail)\.", "--scale (number and order of heads)"),
    (r"^tail\.\d+\.0\.", "--scale (the upsampler of a tail)"),
    (r"query_embed", "--num_queries"),
    (r"\.layers\.", "--num_layers"),
    (r"linear_encoding|mlp_head|query_embed", "--no_mlp"),
    (r"position_encoding", "--no_pos / --patch_size / --patch_dim"),
    (r"\.layers\.\d+\.norm\d", "--no_norm"),
    (r"^head\.\d+\.0\.|in_proj_weight|linear\d", "--n_feats / --patch_dim"),
    (r"sub_mean|add_mean|^head\.\d+\.0\.weight", "--n_colors"),
    # Restormer
    (r"^(encoder_level|decoder_level|latent)\d*\.\d+\.", "--num_blocks"),
    (r"^refinement\.", "--num_refinement_blocks"),
    (r"\.temperature$", "--heads"),
    (r"norm\d\.body\.bias", "--layernorm_type"),
    (r"^(patch_embed|output|down|up)", "--dim"),
    (r"(project_in|project_out|qkv|reduce_chan_level\d|output)\.bias", "--bias"),
)


def _shorten(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
