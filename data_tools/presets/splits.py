"""Where a preset's records come from: the hub (datasets.load_dataset) or a local copy, split by split.

    splits = open_splits(hub_id="openai/gsm8k", config="main", splits=("test",), source=None)
    splits = open_splits(..., source="data/gsm8k/main")          # local: same columns, no network
    for s in splits: print(s.name, s.size, s.get(0))

A local `source` is one of
  - a .jsonl/.csv/.tsv/.parquet file: one split, named from the hub's file naming
    ("law-00000-of-00001.parquet" is split "law"), else the preset's split (when it has one)
    or the file name;
  - a folder of such files (searched recursively), e.g. a download of the hub repository: every
    file's split is read from its name ("0000.parquet" files take their folder's name), and only
    the wanted splits are kept;
  - a folder written by datasets.save_to_disk.
Audio columns are read undecoded ({"bytes", "path"}), because decoding through datasets needs
torchcodec/ffmpeg; data_tools.presets.clips decodes the bytes with soundfile instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_TYPES = (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv")


class PresetError(ValueError):
    """A preset cannot run as asked (source missing, columns missing, another preset's folder)."""


@dataclass
class SplitData:
    """One split: its name, its size, and random access to its records (plain dicts)."""

    name: str
    size: int
    get: Callable[[int], dict]
    where: str
    """Where it was read from, for messages and preset.json."""


def is_hub_id(text: str) -> bool:
    """org/name, and not something that looks like a file path (leading ./ or a data file extension)."""
    return (bool(_HUB_ID.match(text)) and not text.startswith((".", "/", "~"))
            and not text.lower().endswith(_FILE_TYPES))


def split_of_file(path: Path) -> str | None:
    """The split a data file holds, by the hub's naming: SPLIT-00000-of-00001.parquet, or
    SPLIT/0000.parquet (the hub's parquet conversions); None for any other name."""
    m = _SHARD.match(path.stem)
    if m:
        return m.group("split")
    return path.parent.name if path.stem.isdigit() else None


# --------------------------------------------------------------------------- hub


def _hub_splits(hub_id: str, config: str | None, splits: tuple[str, ...], columns: tuple[str, ...]) -> list[SplitData]:
    import datasets  # deferred: importing datasets takes about a second

    out = []
    for split in splits:
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # network, authentication, unknown config or split: all end here
            raise PresetError(f"datasets.load_dataset({hub_id!r}, {config!r}, split={split!r}) failed: {e}. "
                              "With no network, download the dataset elsewhere and pass --source PATH "
                              "(a parquet/jsonl file, a folder of them, or a save_to_disk folder)") from None
        if "audio" in ds.column_names:
            ds = ds.cast_column("audio", datasets.Audio(decode=False))
        keep = [c for c in ds.column_names if c in columns or c not in ("messages", "solution")]
        if len(keep) < len(ds.column_names):
            ds = ds.select_columns(keep)  # long columns nobody reads (NuminaMath's solutions)
        out.append(SplitData(split, len(ds), ds.__getitem__, f"{hub_id} ({config or 'default'}) {split}"))
    return out


# --------------------------------------------------------------------------- local


def _file_split(path: Path, name: str) -> SplitData:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path, memory_map=True)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise PresetError(f"{path}: not a readable Parquet file ({e})") from None
        return SplitData(name, table.num_rows, lambda i: table.slice(i, 1).to_pylist()[0], str(path))
    from data_tools.sources import SourceError, read_records

    try:
        records = [rec if rec is not None else {"_error": f"line {line}: {why}"}
                   for line, rec, why in read_records(path)]
    except SourceError as e:
        raise PresetError(str(e)) from None
    return SplitData(name, len(records), records.__getitem__, str(path))


def _disk_splits(path: Path, wanted: tuple[str, ...]) -> list[SplitData]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise PresetError(f"{path}: datasets.load_from_disk failed ({e})") from None
    parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {wanted[0] if len(wanted) == 1 else "local": ds}
    out = []
    for name, part in parts.items():
        if "audio" in part.column_names:
            part = part.cast_column("audio", datasets.Audio(decode=False))
        out.append(SplitData(name, len(part), part.__getitem__, f"{path} ({name})"))
    return out


def _local_splits(path: Path, wanted: tuple[str, ...]) -> list[SplitData]:
    if path.is_file():
        if path.suffix.lower() not in _FILE_TYPES:
            raise PresetError(f"{path}: use a .parquet, .jsonl, .csv or .tsv file, a folder of them, or a "
                              "save_to_disk folder")
        # One file given on purpose: it is the data. Its split is what the hub's file naming says,
        # else (e.g. gsm8k_test.jsonl) the preset's split when it has one, else the file's name.
        name = split_of_file(path) or (wanted[0] if len(wanted) == 1 else path.stem)
        return [_file_split(path, name)]
    if any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return _disk_splits(path, wanted)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FILE_TYPES)
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(split_of_file(f) or f.stem, []).append(f)
    found = [s for s in wanted if s in by_split]
    if not found:
        raise PresetError(f"{path}: no data file for split(s) {list(wanted)} (found: {sorted(by_split) or 'none'}); "
                          "name files as on the hub (SPLIT-00000-of-00001.parquet) or pass --split")
    out = []
    for s in found:
        parts = [_file_split(f, s) for f in by_split[s]]
        if len(parts) == 1:
            out.append(parts[0])
            continue
        starts = [0]
        for p in parts:
            starts.append(starts[-1] + p.size)

        def get(i: int, parts=parts, starts=starts) -> dict:
            k = max(j for j in range(len(parts)) if starts[j] <= i)
            return parts[k].get(i - starts[k])

        out.append(SplitData(s, starts[-1], get, ", ".join(p.where for p in parts)))
    return out


# --------------------------------------------------------------------------- both


def open_splits(*, hub_id: str, config: str | None, splits: tuple[str, ...], columns: tuple[str, ...],
                source: str | None) -> tuple[list[SplitData], str]:
    """The wanted splits, from `source` (a local path or another hub id) or the preset's `hub_id`;
    also returns what was read (the hub id or the absolute path). Checks the required `columns`."""
    if source and Path(source).expanduser().exists():
        path = Path(source).expanduser().resolve()
        data, used = _local_splits(path, splits), str(path)
    elif source and not is_hub_id(source):
        raise PresetError(f"--source {source!r}: no such file or folder, and not a hub id (org/name)")
    else:
        used = source or hub_id
        data = _hub_splits(used, config, splits, columns)
    for s in data:
        first = next((s.get(i) for i in range(min(s.size, 50)) if "_error" not in s.get(i)), None)
        if first is None:
            continue
        missing = [c for c in columns if c not in first]
        if missing:
            raise PresetError(f"{s.where}: missing column(s) {missing}; it has {sorted(first)}. A preset reads the "
                              f"columns of {hub_id}{f' ({config})' if config else ''}: {list(columns)}")
    return data, used
