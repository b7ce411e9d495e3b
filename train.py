"""Train a policy with the JustRL recipe: `python train.py RECIPE.yaml [section.key=value ...]`."""

import sys

from justrl_min.config import ConfigError, load_recipe
from justrl_min.data import DataError


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nExample: python train.py recipes/tiny_cpu.yaml train.steps=20 rollout.n=4")
        return 0 if argv else 2
    try:
        cfg = load_recipe(argv[0], argv[1:])
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
