"""The container engine: real kernel work, no UI imports (no rich, no prompt_toolkit)."""
