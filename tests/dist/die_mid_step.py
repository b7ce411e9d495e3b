"""Run under `torchrun --nproc_per_node 2` as `die_mid_step.py MARKER RECIPE [key=value ...]`: train.py,
except that rank 1 kills itself (SIGKILL, so nothing of it runs after) inside the update of step
DIE_AT_STEP, first writing MARKER so that the test can time the survivor's exit from that moment."""

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from justrl_min import trainer  # noqa: E402


def main(marker: str, argv: list[str]) -> int:
    die_at_step = int(os.environ["DIE_AT_STEP"])
    real_update = trainer.PolicyUpdate.__call__
    updates = {"n": 0}

    def update_policy(self, *args, **kwargs):
        updates["n"] += 1  # one call per training step, from step 1 (the run starts fresh)
        if os.environ["RANK"] == "1" and updates["n"] == die_at_step:
            Path(marker).write_text("dying")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_update(self, *args, **kwargs)

    trainer.PolicyUpdate.__call__ = update_policy
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
