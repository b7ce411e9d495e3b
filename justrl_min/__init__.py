"""justrl-min: a small, exact RL-from-verifiable-rewards trainer for math LLMs (the JustRL recipe).

The parts are plain modules to import on their own: `justrl_min.algo` (advantages and the clipped PPO
loss as tensor functions), `justrl_min.reward` (the boxed-answer verifier), `justrl_min.config`
(recipes), `justrl_min.trainer` (the loop). The `justrl` command runs them; `justrl --help` lists its
subcommands. Importing the package imports nothing heavy.
"""

__version__ = "0.1.0"

from justrl_min.host_memory import ask_for_huge_pages

ask_for_huge_pages()  # before torch's first large allocation, which reads the switch
