"""jailshell: learn how containers work by building one by hand, one step at a time."""

__version__ = "0.1.0"
