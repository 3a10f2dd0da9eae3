"""The integer codes of the objectives in ``pair_loss_kernel`` (its ``LOSS_TYPE`` constexpr).

Owned here, beside the kernel that branches on them; ``lrdpo_fast.ops.losses`` derives its public
``LOSS_TYPES`` tuple from this mapping. Imports nothing (no Triton), so the ops layer can read it
on any machine.
"""

SIGMOID = 0  # DPO; LR-DPO with alpha > 0
IPO = 1
HINGE = 2
SIGMOID_NORM = 3  # LN-DPO
SIMPO = 4

LOSS_TYPE_CODES = {"sigmoid": SIGMOID, "ipo": IPO, "hinge": HINGE, "sigmoid_norm": SIGMOID_NORM, "simpo": SIMPO}
