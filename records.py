"""Every record the program reads back, declared as a JSON Schema of fields, types and bounds,
and the one checker that reads them (jsonschema).

A record is what a run wrote and a later run trusts: training.json, state.pt, a .safetensors
file's metadata, shards.json, metrics.json, study.json, simulated.json and the cached file
list's counts. Each is a schema below; a new rule is a line of data there. Every number has a
finite maximum that a real run stays far below (a test walks the schemas to hold that), so a
record cannot steer a run into a huge allocation, a thousand processes or a step count that
"finishes" it. The checker's error names the file, the key and what to do, in one line.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from utility import (
    MAX_COUNT,
    MAX_INT64,
    MAX_LOADER_WORKERS,
    RECORD_MAX_BYTES,
    TRAINING_RECORD,
    RecordError,
    read_small_file,
)

MAX_SECONDS = 10 ** 10  # durations: three centuries
MAX_VALUE = 10 ** 15  # any other number a record holds (options are then checked against their own)
MAX_SEED = MAX_INT64  # main.py's --seed: torch.manual_seed takes a 64-bit integer
MAX_SHARD_MEMBERS = 1 << 32  # images in one tar shard: above this, no count of a real one
PYTHON_RNG_WORDS, NUMPY_RNG_WORDS, TORCH_RNG_BYTES = 625, 624, 5056  # the generators' state sizes


def count(least: int = 0, most: int = MAX_COUNT) -> dict:
    """An integer from ``least`` to ``most``."""
    return {"type": "integer", "minimum": least, "maximum": most}


def number(least: float = -MAX_VALUE, most: float = MAX_VALUE) -> dict:
    """A finite number (int or float) from ``least`` to ``most``."""
    return {"type": "number", "minimum": least, "maximum": most}


def optional(schema: dict) -> dict:
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def mapping(values: dict, most: int = MAX_COUNT) -> dict:
    """An object of at most ``most`` keys whose values all follow ``values``."""
    return {"type": "object", "maxProperties": most, "additionalProperties": values}


COUNT, SECONDS, BOOL, TEXT = count(), number(0, MAX_SECONDS), {"type": "boolean"}, {"type": "string"}
TENSOR = {"type": "tensor"}
TEXTS = {"type": "array", "maxItems": 10_000, "items": TEXT}  # a list of strings
PLAIN = {"anyOf": [{"type": ["string", "boolean", "null"]}, number()]}  # an option's value

# training.json beside the weights: the architecture that --pretrain and export rebuild, the
# progress that evaluation reports. Each architecture value is then checked by its own option.
ARCHITECTURE = mapping({"anyOf": [PLAIN, {"type": "array", "maxItems": 64, "items": PLAIN}]}, 256)
TRAINING = {
    "type": "object", "required": ["architecture"],
    "properties": {
        "architecture": ARCHITECTURE,
        "step": COUNT, "max_steps": COUNT, "schedule_steps": COUNT, "best_step": optional(COUNT),
        "finished": BOOL, "interrupted": BOOL, "train_seconds": SECONDS,
        "ema": BOOL, "ema_decay": number(0, 1),
        "weights": mapping({"type": "object", "required": ["step", "size", "mtime_ns"],
                            "properties": {"step": COUNT, "size": count(0, MAX_INT64),
                                           "mtime_ns": count(0, MAX_INT64)}}, 100_000),
    },
}

# state.pt: everything a --resume continues from (read weights-only: no code can run)
RNG = {
    "type": "object", "required": ["torch", "numpy", "python"],
    "properties": {
        "torch": {"type": "tensor", "dtype": "torch.uint8", "shape": [TORCH_RNG_BYTES]},
        "numpy": {"type": "array", "minItems": 5, "maxItems": 5, "prefixItems": [
            TEXT, {"type": "tensor", "shape": [NUMPY_RNG_WORDS]}, count(0, NUMPY_RNG_WORDS), count(0, 1),
            number()]},
        "python": {"type": "array", "minItems": 3, "maxItems": 3, "prefixItems": [
            {"const": 3}, {"type": "array", "minItems": PYTHON_RNG_WORDS, "maxItems": PYTHON_RNG_WORDS,
                           "items": count(0, 2 ** 32 - 1)}, optional(number())]},
        "cuda": {"type": "array", "maxItems": 1024, "items": TENSOR},
    },
}
STATE = {
    "type": "object",
    "required": ["model", "optimizer", "scheduler", "scaler", "progress", "loss_average", "rng", "options"],
    "properties": {
        "model": mapping(TENSOR, 100_000), "ema": mapping(TENSOR, 100_000),
        "optimizer": {"type": "object", "required": ["state", "param_groups"],
                      "properties": {"state": {"type": "object"},
                                     "param_groups": {"type": "array", "maxItems": 1024, "items": mapping(
                                         {"anyOf": [PLAIN, {"type": "array", "maxItems": 100_000,
                                                            "items": PLAIN}]}, 64)}}},
        "scheduler": {"type": "object"}, "scaler": {"type": "object"}, "options": {"type": "object"},
        "progress": {"type": "object", "additionalProperties": False,
                     "required": ["step", "best_psnr", "best_step", "nonfinite_total", "nonfinite_run"],
                     "properties": {"step": COUNT, "best_step": count(-1), "nonfinite_total": COUNT,
                                    "nonfinite_run": COUNT,
                                    "best_psnr": {"anyOf": [number(), {"const": -math.inf}]}}},
        "loss_average": optional(number()),
        "rng": RNG,
        "loader_workers": optional(count(0, MAX_LOADER_WORKERS)),
        "schedule_steps": count(1), "world_size": count(1, 1 << 20), "epoch_steps": count(1),
        "train_seconds": SECONDS, "split_origin": COUNT,
    },
}

# a .safetensors export's metadata: text to text; the architecture is training.json's, as JSON
SAFETENSORS_METADATA = mapping({"type": "string", "maxLength": 1 << 20}, 1024)

# shards.json beside tar shards, written by make_shards: plain *.tar names in the same folder
SHARDS = {
    "type": "object", "required": ["shards"],
    "properties": {"shards": {
        "type": "object", "additionalProperties": count(0, MAX_SHARD_MEMBERS),
        "propertyNames": {"pattern": r"(?i)^(?!\.\.?$)[^/\\\x00]*\.tar$",
                          "description": "a *.tar file name in the shards' folder"}}},
}

# metrics.json of an evaluation: {results: {set: {task: {metric: value}}}}; the study reads SCORES
SCORES = ("psnr_y", "ssim_y", "baseline_psnr", "baseline_ssim")
SCORE = number(-1e6, 1e6)
OTHER = {"anyOf": [number(), {"type": ["string", "boolean", "null"]}]}  # any other plain entry
METRICS = {
    "type": "object", "required": ["results"],
    "properties": {"results": {**mapping({**mapping({
        "type": "object", "required": list(SCORES), "additionalProperties": OTHER,
        "properties": {**dict.fromkeys(SCORES, SCORE), "per_image": mapping(mapping(OTHER, 64))}},
        1024), "minProperties": 1}, 1024), "minProperties": 1}},
}

# study.json: how a study was run, for its report (never where anything is written)
STUDY_COUNTS = {"pretrain_steps": 1, "finetune_steps": 1, "val_every": 1, "noise_images": 1,
                "val_images": 1, "pool_photos": 0, "sample_photos": 0}  # count -> its least value
STUDY_TEXTS = ("options", "machine")
STUDY = {
    "type": "object",
    "required": ["seeds", *STUDY_COUNTS, *STUDY_TEXTS, "pool", "command"],
    "properties": {"seeds": {"type": "array", "minItems": 1, "maxItems": 1000, "uniqueItems": True,
                             "items": count(0, MAX_SEED)},
                   **{k: count(least) for k, least in STUDY_COUNTS.items()},
                   **dict.fromkeys(STUDY_TEXTS, TEXT), "pool": TEXTS, "command": TEXTS},
}

# RUN/.lock, written by the process that runs there (runfolder.py); anything else reads as no holder
LOCK = {"type": "object", "required": ["host", "pid"],
        "properties": {"host": {"type": "string", "maxLength": 255}, "pid": count(1, 2 ** 31 - 1),
                       "started": optional(TEXT), "command": TEXT, "run_id": optional(TEXT)}}

# simulated.json: the options a tree of scripts.scale.simulate_imagenet was made with, and the
# bounds of those options (beyond them a run would fill the disk or memory, or run for days)
SIMULATED = {
    "type": "object", "required": ["files", "classes", "pool", "shards", "shard_members", "seed"],
    "properties": {"files": count(1, 20_000_000),  # above ImageNet-21k's 14.2M images
                   "classes": count(1, 100_000),  # ImageNet-21k has 21,841
                   "pool": count(1, 10_000),  # ~1 GB of JPEGs, a few minutes to make
                   "shards": count(0, 100_000),  # shards.json stays far below its 16 MiB
                   "shard_members": count(1, 100_000), "seed": count(0, MAX_SEED), "complete": BOOL},
}

# the cached file list's counts (its arrays are checked against these, and by their digest)
FILE_LIST_META = {"type": "array", "minItems": 4, "maxItems": 4, "items": count(0, MAX_COUNT)}


def _validator_class() -> Any:
    """Draft 2020-12, with a "tensor" type and its "shape"/"dtype" keywords; integers are ints
    (not 1.0, not bools), numbers are finite, tuples are arrays (torch.load gives tuples)."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    def is_tensor(_, value: object) -> bool:
        torch = sys.modules.get("torch")  # no tensor exists before torch is imported
        return torch is not None and isinstance(value, torch.Tensor)

    def is_number(_, value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or math.isfinite(value))

    types = Draft202012Validator.TYPE_CHECKER.redefine_many({
        "tensor": is_tensor, "number": is_number,
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "array": lambda _, v: isinstance(v, (list, tuple))})

    def shape(_, expected, value, __):
        if is_tensor(None, value) and list(value.shape) != expected:
            yield ValidationError(f"a tensor of shape {list(value.shape)}, not {expected}")

    def dtype(_, expected, value, __):
        if is_tensor(None, value) and str(value.dtype) != expected:
            yield ValidationError(f"a tensor of {value.dtype}, not {expected}")

    return validators.extend(Draft202012Validator, {"shape": shape, "dtype": dtype}, type_checker=types)


_VALIDATORS: dict[int, tuple[Mapping, Any]] = {}  # id(schema) -> (that schema, its validator)


def problem(record: object, schema: Mapping) -> str | None:
    """What is wrong with ``record`` by ``schema``, in a few words naming the key (None: nothing)."""
    from jsonschema.exceptions import best_match
    kept, validator = _VALIDATORS.get(id(schema), (None, None))
    if kept is not schema:  # the schema itself is kept, so its id is never another's
        validator = _validator_class()(schema)
        _VALIDATORS[id(schema)] = (schema, validator)
    error = best_match(validator.iter_errors(record))
    if error is None:
        return None
    key = ".".join(str(k) for k in error.absolute_path)
    wanted = error.schema.get("description") if isinstance(error.schema, dict) else None
    if not key and error.validator == "type" and schema.get("required"):
        wanted = f"an object with the keys {', '.join(map(repr, schema['required']))}"
    message = " ".join((f"{error.instance!r} is not {wanted}" if wanted else error.message).split())
    message = message if len(message) <= 160 else message[:157] + "..."
    return f"key {key!r}: {message}" if key else message


def check(record: object, schema: Mapping, where: str, fix: str) -> Any:
    """``record`` when it follows ``schema``; RecordError "WHERE: PROBLEM; FIX" otherwise."""
    if found := problem(record, schema):
        raise RecordError(f"{where}: {found}; {fix}")
    return record


def parse_json(data: bytes, where: str, fix: str) -> object:
    """JSON text as Python values; RecordError naming ``where`` when it is not UTF-8 JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{where}: not UTF-8 text; {fix}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise RecordError(f"{where}: not readable JSON ({reason}); {fix}") from None


def read_json(path: str, schema: Mapping, fix: str, max_bytes: int = RECORD_MAX_BYTES) -> Any:
    """The JSON record at ``path`` checked by ``schema``: only a regular file of at most
    ``max_bytes`` is read (a FIFO never is); RecordError "PATH: PROBLEM; FIX" otherwise."""
    try:
        data = read_small_file(path, max_bytes)
    except RecordError as e:
        raise RecordError(f"{e}; {fix}") from None
    except FileNotFoundError:  # it was there a moment ago, or is a link to nothing
        raise RecordError(f"{path}: missing, or a link to nothing; {fix}") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None
    return check(parse_json(data, path, fix), schema, path, fix)


def read_training_record(checkpoint: str, strict: bool = False) -> dict | None:
    """The training.json beside a checkpoint file, checked by TRAINING; None when there is none,
    and (unless ``strict``, which raises RecordError naming the file) when it is damaged."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), TRAINING_RECORD)
    if not os.path.lexists(path):
        return None
    fix = (f"it describes the run that saved {checkpoint}: fix or delete it (the model options then "
           f"come from the command line)")
    try:
        return read_json(path, TRAINING, fix)
    except RecordError:
        if strict:
            raise
        return None


SCHEMAS = {"training.json": TRAINING, "state.pt": STATE, "safetensors metadata": SAFETENSORS_METADATA,
           "architecture": ARCHITECTURE, "shards.json": SHARDS, "metrics.json": METRICS,
           "study.json": STUDY, "simulated.json": SIMULATED, ".lock": LOCK, "file list": FILE_LIST_META}
