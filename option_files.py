"""Options read from files: a --config YAML file, and the record of the options that built
--pretrain's weights (its training.json, or a .safetensors file's metadata).

Each value is checked against its option in the option table, with the same types and choices
as the command line; a bad one is a ValueError naming the file and the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import reprlib

import yaml

from option_table import LIST_SEPARATORS, OPTIONS, SWITCH, Option, boolean, finite_float

NOT_IN_CONFIG = ("help", "config")  # parser destinations that a YAML config cannot set
YAML_MERGE_TAG = "tag:yaml.org,2002:merge"  # the << key, which PyYAML resolves itself
HEAD_OPTIONS = ("scale", "tasks")  # the heads of a model, taken from a training record together
HEAD_COUNT_OPTIONS = (*HEAD_OPTIONS, "num_queries")  # ... with the count of task queries
NOT_ARCHITECTURE = ("attention",)  # model options that change the arithmetic, not the weights
# model options the weights keep no trace of: given against the record of the same weights, they
# would build another network that loads them without an error and restores wrongly; refused
RECORD_BOUND = ("num_heads",)


def take_recorded_architecture(args: argparse.Namespace, given: set[str]) -> None:
    """Fill the model options the user did not give from --pretrain's record (``pretrain_record``).

    Keys beyond ``architecture_keys`` are ignored (args.architecture_ignored, for a warning);
    --scale, --tasks and --num_queries come together or not at all; beside RECORD_BOUND's, the
    command line wins. Sets args.architecture_from (the options taken, for the log),
    args.architecture_source and args.pretrain_tasks (the checkpoint's head names, or None)."""
    args.architecture_from, args.architecture_ignored, args.pretrain_tasks = [], [], None
    path, option = args.pretrain, f"--pretrain {args.pretrain}"
    if not path and args.test_only and args.resume:  # the run's own weights: RUN/model/training.json
        path, option = os.path.join(args.save, "model", "model_latest.pt"), "--resume"
    if not path:
        return
    from utility import RecordError
    try:
        record, source = pretrain_record(path)
    except RecordError as e:
        raise ValueError(f"{option}: {e}") from None
    if record is None:
        return
    args.architecture_source = source
    recorded, args.architecture_ignored = recorded_architecture(record["architecture"], source)
    bound = {dest: getattr(args, dest) for dest in given & set(RECORD_BOUND)}
    if contradiction := record_contradiction(recorded, bound, source):
        raise ValueError(contradiction)
    if "tasks" in recorded:
        args.pretrain_tasks = [t.strip() for t in recorded["tasks"].split("+") if t.strip()]
    heads_given = bool(given & set(HEAD_COUNT_OPTIONS))
    for dest, value in recorded.items():
        if dest in given or (dest in HEAD_COUNT_OPTIONS and heads_given):
            continue
        if getattr(args, dest) != value:
            setattr(args, dest, value)
            args.architecture_from.append(f"--{dest} {value}")


def pretrain_record(path: str) -> tuple[dict | None, str]:
    """(the record of the options that built a checkpoint's model, the file it is in): a
    .safetensors file's ``ipt_architecture`` metadata, else the training.json beside the file;
    (None, "") without one. Either is checked by records.TRAINING, then by
    ``recorded_architecture``; a damaged one is a RecordError naming it. A .safetensors file
    whose header is damaged has no record here: loading it says what is wrong."""
    import records
    from model import checkpoint
    from utility import TRAINING_RECORD
    if checkpoint.is_safetensors(path):
        try:
            metadata = checkpoint.read_safetensors_metadata(path)
        except checkpoint.CheckpointError:
            return None, ""
        if checkpoint.ARCHITECTURE_METADATA in metadata:
            source = f"{path} (its {checkpoint.ARCHITECTURE_METADATA} metadata)"
            fix = (f"export the file again from a checkpoint with a sound {TRAINING_RECORD}, or "
                   f"give the model options on the command line")
            text = metadata[checkpoint.ARCHITECTURE_METADATA].encode()
            architecture = records.parse_json(text, source, fix)
            return records.check({"architecture": architecture}, records.TRAINING, source, fix), source
    record = records.read_training_record(path, strict=True)
    if record is None:
        return None, ""
    return record, os.path.join(os.path.dirname(os.path.abspath(path)), TRAINING_RECORD)


@functools.lru_cache(maxsize=1)
def architecture_keys() -> frozenset[str]:
    """The keys a training record's ``architecture`` may set: what ``architecture_record`` writes
    (the options that change the weights' keys or shapes, and --num_heads), nothing else."""
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig
    fields = {f.name for config in (IPTConfig, RestormerConfig) for f in dataclasses.fields(config)}
    dests = {"tasks" if name == "task_names" else name for name in fields}
    return frozenset({"model"} | {d for d in dests if d in OPTIONS and not OPTIONS[d].refused
                                  and d not in NOT_ARCHITECTURE})


def recorded_architecture(recorded: dict, source: str) -> tuple[dict, list[str]]:
    """(the options a record's ``architecture`` gives, checked with their types; the keys it may
    not set, ignored). ValueError, naming the file and the key, for a value of the wrong type."""
    taken, ignored = {}, []
    for key, value in recorded.items():
        if key not in architecture_keys():
            ignored.append(key)
            continue
        try:
            taken[key] = _record_value(OPTIONS[key], value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{source}: architecture key {key!r} {e}; fix the record, or delete it "
                             f"and give the model options on the command line") from None
    return taken, ignored


def record_contradiction(recorded: dict, given: dict, source: str) -> str:
    """Why options ``given`` (command line or --config) contradict the record of the same weights
    in an option of RECORD_BOUND ('' when they do not): the first such option, both values."""
    for dest in RECORD_BOUND:
        if dest in recorded and dest in given and given[dest] != recorded[dest]:
            return (f"--{dest} {given[dest]} contradicts {source}, which records {dest} "
                    f"{recorded[dest]} for these weights (they keep no trace of it: another value "
                    f"loads them without an error and restores wrongly): leave --{dest} out or "
                    f"give {recorded[dest]}")
    return ""


RECORD_KINDS = {SWITCH: ((bool,), "true or false"), int: ((int,), "an integer"),
                finite_float: ((int, float), "a finite number")}  # any other option takes text


def _record_value(o: Option, value: object) -> object:
    """A JSON value of a record, checked against its option o: an int option takes an int (not
    16.0, "16" or true), a float option a number (records.TRAINING bounds it), a switch a boolean,
    text a string (a list option also a list of its items)."""
    if isinstance(value, list) and o.name in LIST_SEPARATORS and value:
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"takes a list of numbers or names, not {_short(value)}")
        value = LIST_SEPARATORS[o.name].join(map(str, value))
    types, kind = RECORD_KINDS.get(o.type, ((str,), "text"))
    if not isinstance(value, types) or (isinstance(value, bool) and o.type is not SWITCH):
        raise ValueError(f"takes {kind}, not {_short(value)}")
    if o.choices is not None and value not in o.choices:
        raise ValueError(f"is {_short(value)}, not one of {', '.join(o.choices)}")
    return value


# a bad value quoted in a message, cut short: a huge YAML alias expansion or record value must not
# build megabytes of text
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 6
_SHORT.maxlevel = 3
_short = _SHORT.repr


def architecture_record(model_name: str, config: object) -> dict:
    """The options that build ``config``'s network, as training.json keeps them."""
    record = {"model": model_name}
    for name, value in dataclasses.asdict(config).items():
        dest = "tasks" if name == "task_names" else name
        if dest in architecture_keys():
            record[dest] = "+".join(map(str, value)) if dest in HEAD_OPTIONS else value
    return record


CONFIG_MAX_BYTES = 1 << 20  # an options file is a few kB; anything larger is not one
CONFIG_MAX_DEPTH = 4  # the file's mapping, an option's list, its stages' lists: 3 levels used


def read_config(path: str) -> dict:
    """Options from a YAML mapping, each checked with its option's type and choices (ValueError:
    what is wrong, naming the file and the key).

    Values are read as the command line would give them: a plain scalar is its text as written
    (``save: 10:30`` is the folder 10:30, not the sexagesimal 630; ``007`` stays 007), only
    true/false are booleans.
    """
    try:
        values, written = _config_mapping(_config_text(path))
        for key, value in values.items():
            if key not in OPTIONS or key in NOT_IN_CONFIG:
                raise ValueError(f"unknown option {_short(key)}")
            if (not isinstance(value, (bool, float)) and value is not None
                    and written.get(str(key)) is not None):  # a YAML float (.inf, 1.5e-4) is a number
                value = written[str(key)]
            try:
                values[key] = _config_value(OPTIONS[key], value)
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ValueError(f"{key}: {e}") from None
    except ValueError as e:
        raise ValueError(f"--config {path}: {e}") from None
    return values


def _config_text(path: str) -> str:
    """The text of an options file: a regular file (a FIFO or device would hang the read) of at
    most CONFIG_MAX_BYTES, UTF-8."""
    from utility import RecordError, read_small_file
    try:
        return read_small_file(path, CONFIG_MAX_BYTES).decode("utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the file ({e.strerror})") from None
    except RecordError as e:
        raise ValueError(f"{str(e).removeprefix(f'{path}: ')}: give a YAML file of options") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason})") from None


def _config_mapping(text: str) -> tuple[dict, dict]:
    """(the options file's mapping, each key's value as its text was written). Anchors and aliases
    are refused: an option file needs none, and nested aliases expand exponentially."""
    try:
        depth = 0  # the event stream is read without recursion; building the values recurses
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError("YAML anchors and aliases (&name, *name) are not supported in an "
                                 "options file: write each value out")
            if isinstance(event, (yaml.CollectionStartEvent, yaml.CollectionEndEvent)):
                depth += 1 if isinstance(event, yaml.CollectionStartEvent) else -1
            if depth > CONFIG_MAX_DEPTH:
                raise ValueError(f"lists or mappings nested more than {CONFIG_MAX_DEPTH} deep (line "
                                 f"{event.start_mark.line + 1}); an option's value nests at most "
                                 f"{CONFIG_MAX_DEPTH - 1}")
        values = yaml.safe_load(text)  # no arbitrary objects
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}, {}
    if not isinstance(values, dict):
        raise ValueError("expected a mapping of option: value")
    written: dict = {}
    for key, value in node.value:  # safe_load keeps a key's last value: a key given twice is refused
        if key.value in written and key.tag != YAML_MERGE_TAG:
            raise ValueError(f"{key.value}: given twice (again on line {key.start_mark.line + 1}); "
                             f"give each option once")
        written[key.value] = _as_written(value)
    return values, written


def _as_written(node: yaml.Node) -> object:
    """A YAML value as its text was written: a scalar's text, a list of them; None otherwise."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode) for n in node.value):
        return [n.value for n in node.value]
    return None


def _config_value(o: Option, value: object) -> object:
    """A YAML value checked and converted as its command-line form would be (ValueError: why not)."""
    if value is None:
        raise ValueError("has no value: remove the key to keep the default")
    if o.type in (SWITCH, boolean):
        if not isinstance(value, bool):
            raise ValueError(f"takes true or false (unquoted), not {_short(value)}")
        return value
    if isinstance(value, list) and o.name in LIST_SEPARATORS:
        if not value:
            raise ValueError("is an empty list: remove the key to keep the default")
        value = LIST_SEPARATORS[o.name].join(_config_scalar(v) for v in value)
    text = _config_scalar(value)
    try:
        converted = text if o.type is None else o.type(text)
    except ValueError:  # int's (a YAML float too: 16.0); the option table's own types raise ArgumentTypeError
        raise ValueError(f"takes an integer, not {_short(value)}") from None
    if o.choices is not None and converted not in o.choices:
        raise ValueError(f"{_short(converted)} is not one of {', '.join(o.choices)}")
    return converted


def _config_scalar(value: object) -> str:
    """One YAML value as the command line would give it: a number or text."""
    kind = {bool: "the boolean ", list: "the list ", dict: "the mapping "}.get(type(value), "")
    if kind or not isinstance(value, (int, float, str)):
        raise ValueError(f"takes one number or text, not {kind}{_short(value)}")
    if "\0" in str(value):  # a command line cannot hold one; a path with one fails deep inside os
        raise ValueError(f"holds a NUL character: {_short(value)}")
    return str(value)
