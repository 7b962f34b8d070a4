"""What a grid file may not exceed, refused with a message when the grid is read rather than found out by an
out-of-memory kill later: YAML whose aliases expand a small file into a huge one (`load_yaml`), a cross product
of too many cells (`check_cells`), and prompts plus generated or target tokens longer than a model's context
(`context_problems`)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from runners.config import AXES, TrialConfig
from runners.contract.errors import ConfigError

# Nodes a grid file's YAML may hold once its aliases are expanded (a real grid has a few hundred).
MAX_YAML_NODES = 100_000
# Cells of a grid's cross product, before `exclude` (a real grid has tens, a big one thousands).
MAX_CELLS = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for with every alias copied out (an alias is the same node object again)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_NODES + 1  # a node inside itself (a recursive alias) is over the budget
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def load_yaml(text: str, path: Path | str):
    """`yaml.safe_load` of a grid file, refused (ConfigError) when its aliases expand it beyond MAX_YAML_NODES
    nodes (a "billion laughs" file: a few lines that stand for gigabytes once copied out)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(
                f"{path}: its anchors and aliases (&name, *name) expand it to more than {MAX_YAML_NODES:,} YAML "
                "nodes; a grid file needs far fewer: write the values out or use fewer nested aliases"
            )
        return loader.construct_document(node)
    except RecursionError as err:
        raise ConfigError(f"{path}: nested too deeply to read as a grid file") from err
    finally:
        loader.dispose()


def check_cells(axes: dict[str, list], where: str) -> None:
    """A cross product of more than MAX_CELLS cells is refused before any is built."""
    cells = math.prod(len(values) for values in axes.values())
    if cells > MAX_CELLS:
        sizes = " × ".join(f"{len(v)} {k}" for k, v in axes.items() if len(v) > 1)
        raise ConfigError(
            f"{where}: axes: {sizes} make {cells:,} cells, more than the {MAX_CELLS:,} a grid may have; "
            "split it into several grids or give fewer values"
        )


def _context(entries: dict, cfg: TrialConfig) -> tuple[int, str] | None:
    from runners.models import context_limit

    if cfg.model not in entries:
        entries[cfg.model] = context_limit(cfg.model_entry)
    return entries[cfg.model]


def _sums(cfg: TrialConfig) -> list[tuple[str, int]]:
    """(what, tokens) that must fit the model's context at once: a decoder-only model reads the prompt and writes
    after it; an encoder-decoder reads the prompt in its encoder and writes in its decoder."""
    source, new, target = cfg.max_source_length, cfg.max_new_tokens, cfg.max_target_length
    if cfg.model_entry.kind == "seq2seq":
        sums = [(f"max_source_length = {source}", source), (f"max_new_tokens = {new}", new)]
        return sums + [(f"max_target_length = {target}", target)] * cfg.method.trains
    sums = [(f"max_source_length + max_new_tokens = {source} + {new} = {source + new}", source + new)]
    trained = (f"max_source_length + max_target_length = {source} + {target} = {source + target}", source + target)
    return sums + [trained] * cfg.method.trains


def context_problems(trials: list[TrialConfig], axes: dict[str, list], where: str) -> list[str]:
    """Each trial whose prompt and summary tokens exceed its model's context (max_position_embeddings or
    n_positions of its config, where that can be known without downloading anything), with the cell's values."""
    entries: dict[str, tuple[int, str] | None] = {}
    ordered = [k for k in AXES if k in axes] + [k for k in axes if k not in AXES]  # as the cells are built
    problems = []
    for cfg in trials:
        known = _context(entries, cfg)
        if known is None:
            continue
        limit, key = known
        cell = ", ".join(f"{k}={getattr(cfg, k, None)}" for k in ordered)
        problems += [
            f"{where}: {what} tokens: more than the {limit} tokens of model {cfg.model}'s context ({key} in its "
            f"config) [cell {cell}]; lower max_source_length, max_new_tokens or max_target_length"
            for what, total in _sums(cfg)
            if total > limit
        ]
    return problems
