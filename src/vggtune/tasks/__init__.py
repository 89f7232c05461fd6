"""One module per ``vggtune`` task word, each with a ``run(cfg)`` function; plus what they share:
run folders and the files written into them (``runs``) and the checks of train's config (``checks``).

May import: every subpackage (core, model, data, training, use, inspect, serve). The command line
(``vggtune.cli``, ``vggtune.preflight``) sits above it.
"""
