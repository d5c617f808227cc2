"""records.py: every record's schema bounds every number, and the one checker refuses numbers out
of range in any field of any record, in one line naming the key."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import checkpointing
import records


def numeric_fields(schema: object, path: str = "") -> list[tuple[str, dict]]:
    """Every (path, subschema) of ``schema`` that admits a number or integer."""
    found = []
    if isinstance(schema, dict):
        kinds = schema.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if {"number", "integer"} & set(kinds):
            found.append((path, schema))
        for key, value in schema.items():
            found += numeric_fields(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += numeric_fields(value, f"{path}/{i}")
    return found


def test_every_numeric_field_of_every_record_declares_a_finite_range():
    assert len(numeric_fields(records.STATE)) >= 15  # the walk finds them
    for name, schema in records.SCHEMAS.items():
        for path, field in numeric_fields(schema):
            assert math.isfinite(field.get("maximum", math.inf)), f"{name}{path} has no finite maximum"
            assert math.isfinite(field.get("minimum", -math.inf)), f"{name}{path} has no finite minimum"


def valid_records() -> dict[str, object]:
    """One sound example of each record, as the program writes it."""
    state = {"model": {"w": torch.zeros(2)}, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
             "scheduler": {}, "scaler": {}, "options": {},
             "progress": {"step": 3, "best_psnr": -math.inf, "best_step": -1, "nonfinite_total": 0,
                          "nonfinite_run": 0},
             "loss_average": 1.5, "rng": checkpointing.rng_states(), "loader_workers": 2,
             "schedule_steps": 10, "world_size": 1, "epoch_steps": 4, "train_seconds": 2.5, "split_origin": 0}
    return {
        "state.pt": state,
        "training.json": {"architecture": {"n_feats": 16, "scale": [2, 3], "model": "ipt", "no_norm": False},
                          "step": 3, "max_steps": 10, "schedule_steps": 10, "best_step": None,
                          "finished": False, "interrupted": True, "train_seconds": 1.0,
                          "weights": {"model_latest.pt": {"step": 3, "size": 100, "mtime_ns": 10 ** 18}}},
        "shards.json": {"shards": {"shard-000000.tar": 12, "B.TAR": 0}},
        "metrics.json": {"results": {"Set5": {"sr2": {"psnr_y": 30.5, "ssim_y": 0.9, "baseline_psnr": 28.0,
                                                     "baseline_ssim": 0.8, "n_images": 5,
                                                     "per_image": {"a": {"psnr": 31.0, "ssim": 0.9}}}}}},
        "study.json": {"seeds": [0, 1], "pool": ["a.png"], "command": ["python", "-m", "scripts.study"],
                       **dict.fromkeys(records.STUDY_COUNTS, 3), "options": "", "machine": "cpu"},
        "file list": [1, 5, 2, 0],
        "simulated.json": {"files": 1000, "classes": 10, "pool": 20, "shards": 2, "shard_members": 8,
                           "seed": 2 ** 62, "complete": True},
        ".lock": {"host": "node1", "pid": 1234, "started": "boot:99", "command": "main.py", "run_id": None},
    }


def numeric_leaves(value: object, path: tuple = ()) -> list[tuple]:
    """The paths of the numbers (not bools) inside nested dicts, lists and tuples."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in numeric_leaves(v, (*path, k))]
    if isinstance(value, (list, tuple)):
        return [leaf for i, v in enumerate(value) for leaf in numeric_leaves(v, (*path, i))]
    return [path] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def replaced(value: object, path: tuple, new: object) -> object:
    """A copy of ``value`` with the leaf at ``path`` replaced by ``new``."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    items = list(value)
    items[head] = replaced(items[head], rest, new)
    return type(value)(items)


def test_the_examples_are_sound():
    for name, record in valid_records().items():
        assert records.problem(record, records.SCHEMAS[name]) is None, name


OUT_OF_RANGE = (st.integers(min_value=2 ** 64, max_value=10 ** 40) | st.integers(max_value=-(2 ** 64))
                | st.sampled_from([math.nan, math.inf, 1e300, -1e300]))
EXAMPLES = valid_records()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@settings(max_examples=60)
@given(data=st.data(), number=OUT_OF_RANGE)
def test_a_number_out_of_range_anywhere_is_refused_naming_its_key(name, data, number):
    record = EXAMPLES[name]
    leaf = data.draw(st.sampled_from(numeric_leaves(record)))
    found = records.problem(replaced(record, leaf, number), records.SCHEMAS[name])
    assert found is not None and "\n" not in found and len(found) < 260
    if leaf[:-1]:  # a field inside the record: the message names the key it is under
        assert str(leaf[0]) in found


@settings(max_examples=100)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                               max_size=3), max_leaves=10))
def test_any_json_value_is_a_sound_record_or_one_line(value):
    for schema in records.SCHEMAS.values():
        found = records.problem(value, schema)
        assert found is None or ("\n" not in found and len(found) < 260)
