"""Key bindings: function keys for the commands a learner needs most.
(Enter on an empty line, Ctrl-C and Ctrl-D are handled by the run loop.)"""

from __future__ import annotations

from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

FUNCTION_KEYS = {"f1": "help", "f2": "state", "f3": "hint"}


def build_key_bindings() -> KeyBindings:
    kb = KeyBindings()

    for key, command in FUNCTION_KEYS.items():
        def run(event: KeyPressEvent, command: str = command) -> None:
            buf = event.app.current_buffer
            buf.text = command
            buf.validate_and_handle()

        kb.add(key)(run)
    return kb
