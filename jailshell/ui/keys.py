"""Key bindings: function keys for the commands a learner needs most.
(Enter on an empty line, Ctrl-C and Ctrl-D are handled by the run loop.)
Each handler is guarded (jailshell.ui.guard): a failure is shown, not fatal."""

from __future__ import annotations

from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from jailshell.ui.guard import guarded, nothing

FUNCTION_KEYS = {"f1": "help", "f2": "state", "f3": "hint"}


def run_command(event: KeyPressEvent, command: str) -> None:
    """Type COMMAND on the line and press Enter for the learner."""
    buf = event.app.current_buffer
    buf.text = command
    buf.validate_and_handle()


def build_key_bindings() -> KeyBindings:
    kb = KeyBindings()

    for key, command in FUNCTION_KEYS.items():
        @guarded(f"key binding for {key.upper()}", nothing)
        def run(event: KeyPressEvent, command: str = command) -> None:
            run_command(event, command)

        kb.add(key)(run)
    return kb
