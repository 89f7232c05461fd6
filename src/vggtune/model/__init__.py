"""The network: VGG architectures and heads (``arch``), their weights (``weights``), the LightningModule
(``module``), layer groups' freeze schedules and learning rates (``finetune``), LR schedules
(``schedulers``), checkpoints (``checkpoint``), and the averaged weights that weights-only checkpoints
keep (``averaging``).

May import: ``vggtune.core``. Never data, training, use, inspect or tasks.
"""
