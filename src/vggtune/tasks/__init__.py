"""One module per ``vggtune`` task word, each with a ``run(cfg)`` function."""
