"""justrl-min: a small, exact RL-from-verifiable-rewards trainer for math LLMs (the JustRL recipe).

The modules in this folder are the JustRL loop and only what it needs; read `trainer.py` first. The
folders beside them hold what a recipe may add and what runs around a run (README, "Map of the code"):

    variants/   options a recipe turns on (critic + GAE, LoRA, reward functions and models, per-source
                graders, DeepScaleR's grader, vLLM rollouts); each loaded only when the config asks
    eval/       benchmarks, the paper's two evaluation protocols, the model judge
    tools/      the `justrl` commands: doctor, curves, estimate, stand-in, export, audit, data preparation

Importing the package imports nothing heavy and changes no setting; the `justrl` command runs the parts.
"""

import importlib.abc
import sys

__version__ = "0.1.0"

MOVED = {  # module names before the package was split into core, variants/, eval/ and tools/ (2026-12)
    **{name: f"variants.{name}" for name in ("critic", "lora", "reward_sources", "shaping", "by_source", "deepscaler")},
    **{name: f"eval.{name}" for name in ("evaluate", "protocols", "judge", "inference")}, "eval_cli": "eval.cli",
    **{name: f"tools.{name}" for name in ("cli", "train_cli", "doctor", "curves", "estimate", "standin", "audit",
                                          "export", "prepare_data", "recipe_files", "cpu_preload")},
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Asked last, only for a name no other finder has: an old module name fails naming the new one."""

    def find_spec(self, fullname, _path=None, _target=None):
        old = fullname.removeprefix(f"{__name__}.")
        if old in MOVED:
            raise ModuleNotFoundError(f"{fullname} moved to {__name__}.{MOVED[old]} (or use the `justrl` command: "
                                      "`justrl --help`)", name=fullname)
        return None


sys.meta_path.append(_MovedModules())
