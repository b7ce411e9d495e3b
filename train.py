"""`python train.py RECIPE [section.key=value ...]`: the checkout's form of `justrl train`
(justrl_min/tools/train_cli.py)."""

import sys

from justrl_min.tools.train_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
