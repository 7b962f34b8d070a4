"""Datasets: the registry of named datasets, loading (hub, local files, synthetic) and normalising to
rows of `id, dialogue, summary, summaries`."""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runners.config import DatasetEntry
from runners.contract.errors import ConfigError

log = logging.getLogger(__name__)

DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(source="builtin:synthetic"),
    # The hub's DialogSum test split repeats each dialogue once per reference; rows are folded below.
    "dialogsum": DatasetEntry(source="knkarthick/dialogsum", eval_split="test"),
    "samsum": DatasetEntry(source="knkarthick/samsum", eval_split="test"),
}

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COLUMNS = ("id", "dialogue", "summary", "summaries")


def load_splits(entry: DatasetEntry, name: str) -> tuple[list[dict], list[dict], dict]:
    """(train rows, eval rows, counts of dropped/folded rows) for a dataset entry."""
    if entry.source == "builtin:synthetic":
        raw_train = synthetic_examples("train", entry.synthetic_size, seed=0)
        raw_eval = synthetic_examples(entry.eval_split, max(entry.synthetic_size // 6, 10), seed=1)
    elif is_local(entry.source):
        raw_train, raw_eval = _load_local(entry, name)
    else:
        raw_train = _load_hub(entry, entry.train_split)
        raw_eval = _load_hub(entry, entry.eval_split)
    for extra in entry.extra_train:
        raw_train = list(raw_train) + _read_table(Path(extra).expanduser(), name)
    counts: dict = {}
    train = normalise(raw_train, entry, name, "train", counts)
    evaluation = normalise(raw_eval, entry, name, "eval", counts)
    if not train or not evaluation:
        raise ConfigError(f"dataset {name!r}: no usable rows left (train {len(train)}, eval {len(evaluation)})")
    return train, evaluation, counts


def is_local(source: str) -> bool:
    """Whether a source (or a dataset name given where a name goes) is a local path rather than a hub id."""
    return source.startswith((".", "/", "~")) or Path(source).suffix in LOCAL_SUFFIXES or Path(source).exists()


def check_local_files(trials) -> None:
    """Every local file and folder the trials' datasets read is there (a ConfigError, exit code 2, names the first
    one that is not): checked before anything runs, not found by each trial after its start-up."""
    seen = set()
    for cfg in trials:
        name, entry = cfg.dataset, cfg.dataset_entry
        if name in seen or entry.source.startswith("builtin:") or not is_local(entry.source):
            continue
        seen.add(name)
        source = Path(entry.source).expanduser()
        if source.is_dir():  # its split files (a ConfigError names one that is not there)
            for split in (entry.train_split, entry.eval_split):
                _split_file(source, split, name)
        for path in [str(source), *([entry.eval_source] if entry.eval_source else []), *entry.extra_train]:
            if not Path(path).expanduser().exists():
                raise ConfigError(f"dataset {name!r}: file not found: {Path(path).expanduser()}")


def made_absolute(value) -> str | None:
    """A relative path of a local file or folder that exists, made absolute (a trial runs in its own folder, where
    it would point elsewhere); None for anything else."""
    if not isinstance(value, str) or value.startswith("builtin:") or Path(value).is_absolute():
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else None


def path_entry(value: str) -> DatasetEntry:
    """The entry of a dataset named by its local path (`--set dataset=./data/dialogsum`): one file, or a folder
    of `train.*` and `test.*` files, checked now and made absolute, so a trial that runs in its own folder (or
    on another node of a shared file system) finds it. A ConfigError says what is wrong with the path."""
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(
            f"no such file or folder: {path}; give a dataset name, a {'/'.join(LOCAL_SUFFIXES)} file, "
            "or a folder of train.* and test.* files"
        )
    if path.is_dir():
        for split in ("train", "test"):
            _split_file(path, split, value)
    elif path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"{path} is not one of {', '.join(LOCAL_SUFFIXES)} (nor a folder of split files)")
    return DatasetEntry(source=str(path.resolve()))


def _read_table(path: Path, name: str) -> list[dict]:
    import pandas as pd

    if not path.exists():
        raise ConfigError(f"dataset {name!r}: file not found: {path}")
    readers = {
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".json": pd.read_json,
        ".csv": pd.read_csv,
        ".parquet": pd.read_parquet,
    }
    if path.suffix not in readers:
        raise ConfigError(f"dataset {name!r}: {path} is not one of {', '.join(LOCAL_SUFFIXES)}")
    try:
        return readers[path.suffix](path).to_dict("records")
    except ValueError as err:
        raise ConfigError(f"dataset {name!r}: cannot read {path}: {err}") from err


def _load_local(entry: DatasetEntry, name: str) -> tuple[list[dict], list[dict]]:
    source = Path(entry.source).expanduser()
    if source.is_dir():
        train, evaluation = _split_file(source, entry.train_split, name), _split_file(source, entry.eval_split, name)
        return _read_table(train, name), _read_table(evaluation, name)
    rows = _read_table(source, name)
    if entry.eval_source:
        return rows, _read_table(Path(entry.eval_source).expanduser(), name)
    # One file only: hold out a seeded 10% for evaluation.
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    n_eval = max(1, len(rows) // 10)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _split_file(folder: Path, split: str, name: str) -> Path:
    """A folder's file of one split: train.jsonl, test.csv, … (any supported suffix)."""
    for suffix in LOCAL_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise ConfigError(f"dataset {name!r}: no {split}{{{','.join(LOCAL_SUFFIXES)}}} in {folder} (found: {found})")


def _load_hub(entry: DatasetEntry, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(entry.source, entry.subset, split=split, revision=None)
    except Exception as err:  # the hub raises many types; all mean "cannot get this data"
        raise ConfigError(
            f"cannot load dataset {entry.source!r} split {split!r} from the Hugging Face hub: "
            f"{type(err).__name__}: {str(err)[:300]}"
        ) from err
    return ds.to_list()


URL = re.compile(r"https?://\S+|www\.\S+")
MENTION = re.compile(r"@\w+")


def clean_text(text: str) -> str:
    """TweetSumm cleaning: drop URLs and @-mentions, collapse runs of spaces (line breaks kept)."""
    text = MENTION.sub("", URL.sub("", text))
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())


def normalise(rows: list[dict], entry: DatasetEntry, name: str, split: str, counts: dict) -> list[dict]:
    """Rows of id/dialogue/summary/summaries; empty rows dropped and counted; rows with the same dialogue
    folded into one example with several references (DialogSum's test split on the hub)."""
    unknown = set(entry.columns) - set(COLUMNS)
    if unknown:
        raise ConfigError(f"dataset {name!r}: columns: unknown keys {sorted(unknown)}; allowed: {', '.join(COLUMNS)}")
    col = {c: entry.columns.get(c, c) for c in COLUMNS}
    found = list(rows[0]) if rows else []
    missing = [f"{c} (column {col[c]!r})" for c in ("dialogue", "summary") if rows and col[c] not in rows[0]]
    if missing and not (col["summaries"] in found and col["dialogue"] in found):
        raise ConfigError(
            f"dataset {name!r} ({split}): missing {', '.join(missing)}; columns found: {', '.join(map(str, found))}. "
            "Map them with `columns: {dialogue: ..., summary: ...}` in the dataset entry."
        )
    out: dict[str, dict] = {}
    dropped = 0
    for i, row in enumerate(rows):
        dialogue = _text(row.get(col["dialogue"]))
        refs = row.get(col["summaries"])
        refs = [_text(r) for r in refs] if isinstance(refs, (list, tuple)) or hasattr(refs, "tolist") else []
        if not refs:
            refs = [_text(row.get(col["summary"]))]
        if entry.clean:
            dialogue, refs = clean_text(dialogue), [clean_text(r) for r in refs]
        refs = [r for r in refs if r]
        if not dialogue or not refs:
            dropped += 1
            continue
        key = dialogue
        if key in out:
            out[key]["summaries"] += [r for r in refs if r not in out[key]["summaries"]]
            counts[f"{split}_folded"] = counts.get(f"{split}_folded", 0) + 1
            continue
        ident = row.get(col["id"])
        ident = str(ident) if ident is not None and str(ident) != "nan" else f"{split}-{i}"
        out[key] = {"id": ident, "dialogue": dialogue, "summary": refs[0], "summaries": refs}
    if dropped:
        counts[f"{split}_dropped_empty"] = dropped
        log.warning("dataset %s (%s): dropped %d rows with an empty dialogue or summary", name, split, dropped)
    examples = list(out.values())
    dupes = [k for k, v in Counter(e["id"] for e in examples).items() if v > 1]
    for e in examples:
        if e["id"] in dupes:  # ids must be unique for paired statistics
            # a content hash (not Python's per-process hash()): the same rows get the same ids in every trial
            e["id"] = f"{e['id']}#{hashlib.sha256(e['dialogue'].encode()).hexdigest()[:6]}"
    return examples


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


# --- the built-in synthetic dataset -------------------------------------------------------------------
# Multi-turn dialogues whose one-sentence summary follows from their content (who, what, when, where),
# so that even a tiny model can learn to summarise them and a demo shows learning within minutes.

NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Kate",
    "Leo",
    "Maya",
    "Nina",
    "Omar",
    "Paula",
    "Quinn",
    "Rosa",
    "Sam",
    "Tom",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["9 am", "10 am", "11 am", "noon", "2 pm", "3 pm", "4 pm", "6 pm", "7 pm", "8 pm"]
PLACES = ["the library", "the cafe", "the office", "the park", "the station", "the gym", "the museum"]
ITEMS = ["the report", "the tickets", "a cake", "the laptop", "the keys", "the slides", "some books"]
FOODS = ["pizza", "pasta", "sushi", "salad", "soup", "curry", "burgers"]
PROBLEMS = ["the printer is broken", "the internet is down", "the heating does not work", "a window is stuck"]


@dataclass(frozen=True)
class Scenario:
    """One kind of synthetic dialogue: slots drawn at random, then turns and a summary that mention them."""

    draw: Callable[[random.Random], dict]  # the slots, drawn in a fixed order (the rows depend on it)
    dialogue: str  # the turns, one per line, with {a}, {b} (the speakers) and the slots
    summary: str


def _two(r: random.Random, pool: list[str], first: str, second: str) -> dict:
    return dict(zip((first, second), r.sample(pool, 2), strict=True))


SCENARIOS = (
    Scenario(
        lambda r: {**_two(r, DAYS, "d1", "d2"), "t": r.choice(TIMES), "p": r.choice(PLACES), "item": r.choice(ITEMS)},
        """\
{a}: Hi {b}, can we meet on {d1}?
{b}: Sorry, {d1} is bad for me. How about {d2} at {t}?
{a}: {d2} at {t} works. Let's meet at {p}.
{b}: Great. I will bring {item}.""",
        "{a} and {b} will meet on {d2} at {t} at {p}. {b} will bring {item}.",
    ),
    Scenario(
        lambda r: {**_two(r, FOODS, "f1", "f2"), "n": r.randint(2, 6), "t": r.choice(TIMES)},
        """\
{a}: Hello, I would like to order {f1} for {n} people.
{b}: Sorry, we have no {f1} today.
{a}: Then {f2}, please. Can you deliver it at {t}?
{b}: Yes, {f2} for {n} at {t}.""",
        "{a} orders {f2} for {n} people from {b}, delivered at {t}, because there is no {f1}.",
    ),
    Scenario(
        lambda r: {"problem": r.choice(PROBLEMS), "day": r.choice(DAYS), "t": r.choice(TIMES)},
        """\
{a}: {b}, {problem} again.
{b}: Oh no. I can send someone to fix it.
{a}: When can they come?
{b}: On {day} at {t}. Is that fine?
{a}: Yes, thank you.""",
        "{a} tells {b} that {problem}. {b} will send someone on {day} at {t}.",
    ),
    Scenario(
        lambda r: {**_two(r, PLACES, "p1", "p2"), "day": r.choice(DAYS), "item": r.choice(ITEMS)},
        """\
{a}: Are we still going to {p1} on {day}?
{b}: I think {p2} is better, {p1} is closed.
{a}: Fine, {p2} then. Should I take {item}?
{b}: Yes please, take {item}.""",
        "{a} and {b} will go to {p2} on {day} instead of {p1}. {a} will take {item}.",
    ),
)


def synthetic_examples(split: str, n: int, seed: int) -> list[dict]:
    """`n` deterministic dialogues; the same (split, n, seed) gives the same rows everywhere."""
    r = random.Random(f"ftgrid-synthetic-{split}-{seed}")
    rows = []
    for i in range(n):
        a, b = r.sample(NAMES, 2)
        scenario = SCENARIOS[i % len(SCENARIOS)]
        slots = {"a": a, "b": b, **scenario.draw(r)}
        dialogue, summary = scenario.dialogue.format(**slots), scenario.summary.format(**slots)
        rows.append({"id": f"synthetic-{split}-{i:04d}", "dialogue": dialogue, "summary": summary})
    return rows
