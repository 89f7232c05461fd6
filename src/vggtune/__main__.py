"""``python -m vggtune`` is the same as the ``vggtune`` command."""

from vggtune.cli import main

if __name__ == "__main__":
    main()
