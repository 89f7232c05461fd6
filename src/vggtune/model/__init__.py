"""The network: VGG architectures and heads (``arch``), their weights (``weights``), the LightningModule
(``module``), layer groups' freeze schedules and learning rates (``finetune``), LR schedules
(``schedulers``), and checkpoints (``checkpoint``).

May import: ``vggtune.core``. Never data, training, use, inspect or tasks.
"""
