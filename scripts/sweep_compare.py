"""The small sweep behind ``lrdpo-fast demo --compare``'s hyper-parameters (README, "Which objective?").

    python scripts/sweep_compare.py [--out out/sweep] [--methods dpo,simpo] [--iterations 3] [--seed 1]

Every objective at a few candidate values on the demo task in the ``--quick`` setting, on another
seed than the comparison's; writes OUT/sweep.md (the table) and says whether the defaults of
``--compare`` are the picks. The candidates and the rule live in ``lrdpo_fast/cli/demo_sweep.py``.
"""

import sys

from lrdpo_fast.cli.demo_sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
