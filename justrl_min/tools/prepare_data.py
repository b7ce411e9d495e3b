"""Fetch the training set and the nine benchmarks, and write them as local parquet with manifests.

    justrl prepare-data --out DIR                        # everything, from the Hugging Face hub
    justrl prepare-data --out DIR --only aime24,math500  # a few
    justrl prepare-data --out DIR --local dapo=/copies/dapo.parquet --local-dir /copies/benchmarks

(`python data/prepare.py ...` in a checkout is the same command.)

Writes, for each source, ``DIR/<folder>/<split>.parquet`` and ``DIR/<folder>/manifest.json``:
``DIR/DAPO-Math-17k/train.parquet`` for training (``data.train=DIR/DAPO-Math-17k``) and
``DIR/<benchmark folder>/test.parquet`` in the layout ``eval.py --data-dir DIR`` reads. Every file has
one schema: ``id``, ``problem``, ``answer``, ``source`` (all strings). Rows are read with
``justrl_min.data.load_problems`` (every schema it knows: verl, MathArena, MATH, math-ai), golds are
cleaned (``\\boxed{204}`` and ``$204$`` are ``204``), DAPO's "Answer: $Answer" wrapper is stripped,
and repeated problem texts are dropped (the first row is kept). See data/README.md.

Offline: ``--local NAME=PATH`` reads a source from a file or folder (any schema above) instead of the
hub; ``--local-dir DIR`` does so for every source with a ``DIR/<folder>`` (the JustRL repository's
``data/`` layout, as in ../shared/benchmarks). Sources without a local copy come from the hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from justrl_min.data import MANIFEST, DataError, Problem, dedup_problems, load_problems
from justrl_min.eval.evaluate import BENCHMARKS  # the benchmarks' hub ids live there

SCHEMA_COLUMNS = ("id", "problem", "answer", "source")


@dataclass(frozen=True)
class Source:
    name: str
    hub_id: str
    split: str
    folder: str
    out_split: str
    """The output file's stem: ``train`` for training data, ``test`` for benchmarks."""
    strip_dapo_instruction: bool
    expected_rows: int | None
    """Rows after de-duplication in the JustRL repository's copy; a different count is reported."""


# The training set, then the nine benchmarks of evaluate.BENCHMARKS (the one table of their hub ids,
# splits and folders). Expected counts: DESIGN.md §4 (DAPO ~17.4-17.9k unique) and the JustRL files.
_BENCHMARK_ROWS = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272,
                   "olympiadbench": 674, "hmmt25": 30, "brumo25": 30, "cmimc25": 40}
SOURCES: dict[str, Source] = {
    "dapo": Source("dapo", "BytedTsinghua-SIA/DAPO-Math-17k", "train", "DAPO-Math-17k", "train", True, None),
    **{name: Source(name, bench.hub_id, bench.split, bench.folder, "test", False, _BENCHMARK_ROWS[name])
       for name, bench in BENCHMARKS.items()},
}


def resolve_hub_revision(hub_id: str, revision: str | None) -> str:
    """The commit a branch or tag of a hub dataset points at now, so the manifest pins what was read."""
    import huggingface_hub

    try:
        return huggingface_hub.dataset_info(hub_id, revision=revision).sha
    except Exception as e:  # network, auth, unknown id: all fatal, all need the id named
        raise DataError(f"cannot reach hub dataset {hub_id!r}: {e}. Give a local copy with "
                        f"--local NAME=PATH or --local-dir DIR.") from None


def read_source(source: Source, local: Path | None, revision: str | None) -> tuple[list[Problem], str, str]:
    """(problems as read, in order; where from; revision): a local copy, else the hub at a pinned commit."""
    if local is not None:
        problems = load_problems(str(local), split=source.out_split,
                                 strip_dapo_instruction=source.strip_dapo_instruction)
        return problems, str(local), "local sha256:" + _sha256_of(local)
    commit = resolve_hub_revision(source.hub_id, revision)
    problems = load_problems(source.hub_id, split=source.split, revision=commit,
                             strip_dapo_instruction=source.strip_dapo_instruction)
    return problems, source.hub_id, commit


def prepare(source: Source, out_dir: Path, local: Path | None = None, revision: str | None = None) -> dict:
    """Read, de-duplicate and write one source; returns its manifest (also written beside the file)."""
    problems, origin, revision = read_source(source, local, revision)
    kept = dedup_problems(problems)
    golds_by_problem: dict[str, set[str]] = defaultdict(set)
    for problem in problems:
        golds_by_problem[problem.problem].add(problem.answer)
    folder = out_dir / source.folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.out_split}.parquet"
    _write_parquet(path, kept, origin)
    manifest = {
        "name": source.name,
        "file": path.name,
        "source": origin,
        "hub_id": source.hub_id,
        "revision": revision,
        "columns": list(SCHEMA_COLUMNS),
        "rows": len(kept),
        "unique_problems": len(golds_by_problem),
        "source_rows": len(problems),
        "duplicates_dropped": len(problems) - len(kept),
        "problems_with_conflicting_golds": sum(len(golds) > 1 for golds in golds_by_problem.values()),
        "dapo_instruction_stripped": source.strip_dapo_instruction,
        "expected_rows": source.expected_rows,
        "sha256": _sha256_of(path),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_parquet(path: Path, problems: list[Problem], origin: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": [p.uid for p in problems], "problem": [p.problem for p in problems],
               "answer": [p.answer for p in problems], "source": [origin] * len(problems)}
    schema = pa.schema([(name, pa.string()) for name in SCHEMA_COLUMNS])
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(columns, schema=schema), tmp)
    tmp.replace(path)  # a half-written file never has the final name


def _sha256_of(path: Path) -> str:
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or name not in SOURCES:
            raise SystemExit(f"{flag} {value!r}: expected NAME=VALUE with NAME one of {', '.join(SOURCES)}")
        pairs[name] = rest
    return pairs


def main(argv: list[str] | None = None, prog: str = "justrl prepare-data") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SOURCES)}")
    parser.add_argument("--local", action="append", default=[], metavar="NAME=PATH",
                        help="read NAME from a local file or folder in any supported schema (repeatable)")
    parser.add_argument("--local-dir", type=Path, help="read every source that has DIR/<folder> from there")
    parser.add_argument("--revision", action="append", default=[], metavar="NAME=REV",
                        help="hub branch, tag or commit for NAME (default: the main branch, pinned to its commit)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(SOURCES)
    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        parser.error(f"unknown source {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    local = {name: Path(path).expanduser() for name, path in _pairs(args.local, "--local").items()}
    revisions = _pairs(args.revision, "--revision")
    for name in names:
        folder = args.local_dir / SOURCES[name].folder if args.local_dir else None
        if name not in local and folder is not None and folder.is_dir():
            local[name] = folder
    mismatched = []
    for name in names:
        try:
            manifest = prepare(SOURCES[name], args.out, local.get(name), revisions.get(name))
        except DataError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        print(f"{name:14s} {manifest['rows']:7d} rows ({manifest['source_rows']} read, "
              f"{manifest['duplicates_dropped']} duplicates dropped) from {manifest['source']} "
              f"@ {manifest['revision'][:20]} -> {args.out / SOURCES[name].folder / manifest['file']}")
        if manifest["expected_rows"] is not None and manifest["rows"] != manifest["expected_rows"]:
            mismatched.append(f"{name}: {manifest['rows']} rows, the JustRL copy has {manifest['expected_rows']}")
    for line in mismatched:
        print(f"note: {line}")
    return 0

