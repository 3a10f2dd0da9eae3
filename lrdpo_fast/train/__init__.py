"""Layer 4, train: ``TrainConfig`` (config.py) and the ``Trainer`` recipe (trainer.py) with its
parts: the policy+loss root (policy.py), the reference (reference.py), optimizer and schedule
(optim.py), checkpoints (checkpoint.py), torch.distributed / FSDP2 (distributed.py), metrics
(metrics.py). Never imports vllm.
"""

from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
