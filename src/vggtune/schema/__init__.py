"""The config's shape: every key of vggtune's own config groups and task configs, declared once with what it
accepts and what it does (``groups``, ``tasks``), made of the kinds in ``kinds``; ``check`` holds a composed
config against it. The configuration reference (docs/gen_config_reference.py) prints these declarations, and a
value that does not fit is one UserError saying what the key accepts. The values (defaults) stay in conf/*.yaml,
which Hydra composes; tests/test_schema.py keeps the two in step.

May import: ``vggtune.core`` (and the standard library): no torch, no Hydra, so that any layer may import it.
"""
