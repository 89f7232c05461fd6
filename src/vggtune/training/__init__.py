"""What runs around ``Trainer.fit``: callbacks (epoch seeding, replica check), fault handling
(interrupts, non-finite losses), progress output, TensorBoard (scalars, HPARAMS, text and images),
and sweeps (Hydra's callback and launcher settings).

May import: ``vggtune.core``, ``vggtune.model``, ``vggtune.data``. Never use, inspect or tasks.
"""
