"""REPL commands: a registry of Command records whose handlers return data."""
