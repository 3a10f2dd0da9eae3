"""Rebuild the demo's shipped start policy (lrdpo_fast/demo/start_policy/) from its recipe and seed.

    python scripts/train_demo_policy.py [--out DIR] [--steps N] [--seed S]

The recipe, the seed and the training loop live in ``lrdpo_fast/demo/sft.py`` (also runnable as
``python -m lrdpo_fast.demo.sft``); on the same CPU the weights come out bit for bit the same
(compare the printed sha256 with the one in ``start_policy/README.md``).
"""

import sys

from lrdpo_fast.demo.sft import main

if __name__ == "__main__":
    main(sys.argv[1:])
