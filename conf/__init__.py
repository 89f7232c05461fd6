"""vggtune's Hydra configs. A package only so that they ship inside the wheel as ``vggtune.conf``."""
