"""The teaching REPL: prompt_toolkit session, completion, toolbar, key bindings, rich renderers."""
