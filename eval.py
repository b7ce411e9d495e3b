"""`python eval.py --model M --benchmarks ...`: the checkout's form of `justrl eval` (justrl_min/eval/cli.py)."""

import sys

from justrl_min.eval.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python eval.py"))
