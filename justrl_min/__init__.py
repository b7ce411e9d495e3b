"""justrl-min: a small, exact RL-from-verifiable-rewards trainer for math LLMs (the JustRL recipe).

The modules in this folder are the JustRL loop and only what it needs; read `trainer.py` first. The
folders beside them hold what a recipe may add and what runs around a run (README, "Map of the code"):

    variants/   options a recipe turns on (critic + GAE, LoRA, reward functions and models, per-source
                graders, DeepScaleR's grader, vLLM rollouts); each loaded only when the config asks
    eval/       benchmarks, the paper's two evaluation protocols, the model judge
    tools/      the `justrl` commands: doctor, curves, estimate, stand-in, export, audit, data preparation

Importing the package imports nothing and changes nothing; the `justrl` command runs the parts.
"""

__version__ = "0.1.0"
