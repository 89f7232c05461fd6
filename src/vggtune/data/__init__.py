"""The user's images: reading them (``images``, ``scan``), finding classes and the seeded split
(``discovery``), transforms, the seeded datasets and sampler (``datasets``), the decoded-image and
feature caches, MixUp and CutMix of training batches (``mixing``), class weights (``balance``), the
batch size a small data set trains with (``batching``), the
LightningDataModule (``datamodule``), the generated demo data (``demo``) and
litdata shards of a split (``stream_write`` writes them, ``stream`` reads them, ``stream_store`` says
where they are; ``optional`` imports what needs the ``stream`` extra).

May import: ``vggtune.core`` and ``vggtune.model`` (a network's preprocessing and, for the feature
cache, its frozen trunk). Never training, use, inspect or tasks.
"""
