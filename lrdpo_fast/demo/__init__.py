"""The demo's science: an embedded task whose truth a rule checks, a length-biased judge, and a
small shipped start policy (see ``task``, ``policy`` and ``scripts/train_demo_policy.py``).

The task is 4-digit reversal (``4817=`` -> ``7184``), answered in one of three styles of very
different length; the judge rewards correctness plus a capped bonus per character (the bias real
reward models have), so iterative DPO against it grows answers, while the length term of LR-DPO
keeps them in check. ``true_accuracy`` is only measured, never optimized.
"""
