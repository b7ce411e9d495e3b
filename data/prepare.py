"""`python data/prepare.py --out DIR ...`: the checkout's form of `justrl prepare-data`
(justrl_min/tools/prepare_data.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from justrl_min.tools.prepare_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python data/prepare.py"))
