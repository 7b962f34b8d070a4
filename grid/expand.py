"""The cells of a grid: the cross product of its axes, the `exclude:` entries that remove cells (and why none is
left when they remove them all), the `overrides:` that set settings for the cells they match, and a cell's raw
settings with its model, dataset and template entries resolved."""

from __future__ import annotations

import itertools

import yaml

from runners.config import AXES


def product(axes: dict[str, list]):
    """Every cell of the cross product (axis → value, the five axes first)."""
    ordered = [k for k in AXES if k in axes] + [k for k in axes if k not in AXES]
    for values in itertools.product(*(axes[k] for k in ordered)):
        yield dict(zip(ordered, values, strict=True))


def points(spec, axes: dict[str, list]):
    """The cells of the cross product that no `exclude` rule removes."""
    for point in product(axes):
        if not any(matches(point, rule) for rule in spec.exclude):
            yield point


def all_excluded(spec, axes: dict[str, list], picks: dict, where: str) -> str:
    """Why no cell is left: the `exclude` entries that removed them all (or the cell a --pick landed on)."""
    used = sorted({next(i for i, rule in enumerate(spec.exclude) if matches(point, rule)) for point in product(axes)})
    entries = " and ".join(
        f"exclude[{i}] {yaml.safe_dump(spec.exclude[i], default_flow_style=True, sort_keys=False).strip()}"
        for i in used
    )
    if picks:
        picked = " ".join(f"--pick {k}={v}" for k, v in picks.items())
        return f"{where}: {picked}: that cell is removed by {entries}; pick other values or drop the entry"
    return f"{where}: exclude: no cell of the grid is left (removed by {entries}); remove or narrow an entry"


def matches(point: dict, rule: dict) -> bool:
    """Whether a cell has every value a rule (an `exclude` entry, an override's `match`) names."""
    return all(point.get(k) == v for k, v in rule.items())


def cell(spec, point: dict, registries: dict) -> dict:
    """The raw settings of one cell: fixed settings, the cell's axis values, matching overrides, resolved entries."""
    raw = {**spec.settings, **point}
    for rule in spec.overrides:
        if matches(point, rule.match):
            raw.update(rule.settings)
    raw.setdefault("template", "custom")
    raw["model_entry"] = registries["model"][raw["model"]]
    raw["dataset_entry"] = registries["dataset"][raw["dataset"]]
    raw["template_entry"] = registries["template"][raw["template"]]
    return raw
