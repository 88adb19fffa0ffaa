"""Errors for bad hardware specifications (the CLI prints them as one line)."""


class HardwareSpecError(ValueError):
    """A device preset, non-ideality or crossbar specification is out of range."""
