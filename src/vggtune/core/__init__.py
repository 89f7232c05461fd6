"""What every layer uses: the one user-facing error type, atomic file writes, shared config-value checks.

May import: nothing from vggtune (only the standard library).
"""
