"""The REPL: one function builds the prompt session (pgcli's _build_cli), a
small loop reads lines and hands them to the dispatcher (Ctrl-C clears the
line, Ctrl-D leaves, asking first while a jail is running), and no exception
from a command ends the learner's session (ptpython: show it, carry on).

Without a terminal on stdin, lines are read one by one through the same
dispatcher, output is plain, and the exit status is the last failure's
(litecli's way), so scripts and CI can drive jailshell too.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from jailshell.commands.results import Confirm, Handover, Message, Quit, Results, StepReport
from jailshell.errors import ExitStatus, JailshellError
from jailshell.ui import guard
from jailshell.ui.guard import guarded

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import StyleAndTextTuples
    from prompt_toolkit.input import Input
    from prompt_toolkit.output import Output

    from jailshell.commands.workspace import Workspace
    from jailshell.context import AppContext
    from jailshell.ui.render import Renderer

NEXT_WORDS = ("next", "n")
_PLAIN_PROMPT: StyleAndTextTuples = [("", "jailshell> ")]


class Repl:
    def __init__(self, ctx: AppContext, ws: Workspace, *, pt_input: Input | None = None,
                 pt_output: Output | None = None, history: bool = True, present_width: int | None = None):
        self.ctx = ctx
        self.present_width = present_width  # presenter mode's columns of text (None: its default)
        self.ws = ws
        self.pt_input = pt_input
        self.pt_output = pt_output
        self.use_history = history
        self.status = int(ExitStatus.OK)
        self._renderer: Renderer | None = None
        self._session: PromptSession[str] | None = None
        self._eof_at_question = False

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from jailshell.ui.render import Renderer

            self._renderer = Renderer(self.ctx.console, present=self.ctx.present, present_width=self.present_width)
        return self._renderer

    # -- the prompt ------------------------------------------------------------------------

    def _build_cli(self, *, plain: bool = False) -> PromptSession[str]:
        """plain: the last resort after prompt_toolkit itself failed outside every
        guarded callback: no completion, colours or status line, only the line."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        from jailshell.context import ensure_state_dir
        from jailshell.ui.completer import CommandCompleter
        from jailshell.ui.keys import build_key_bindings
        from jailshell.ui.lexer import CommandLexer
        from jailshell.ui.style import prompt_style
        from jailshell.ui.toolbar import create_toolbar_tokens_func

        history: Any = InMemoryHistory()
        if self.use_history:
            try:
                ensure_state_dir(self.ctx.state_dir)
                history = FileHistory(str(self.ctx.history_path))
            except OSError:
                pass  # a read-only home must not keep anyone from learning
        if plain:
            return PromptSession(message="jailshell> ", history=history, input=self.pt_input, output=self.pt_output)
        # Every callback of ours that prompt_toolkit calls is guarded (jailshell.ui.guard).
        return PromptSession(
            message=self._prompt_message,
            history=history,
            auto_suggest=AutoSuggestFromHistory(),
            completer=CommandCompleter(self.ws),
            complete_while_typing=False,
            lexer=CommandLexer(self.ws.registry),
            style=prompt_style(),
            include_default_pygments_style=False,
            bottom_toolbar=create_toolbar_tokens_func(self.ws, present=self.ctx.present),
            key_bindings=build_key_bindings(),
            refresh_interval=1.0,
            input=self.pt_input,
            output=self.pt_output,
        )

    @guarded("prompt", lambda self: _PLAIN_PROMPT)
    def _prompt_message(self) -> StyleAndTextTuples:
        # Called by prompt_toolkit at every redraw: guarded, a plain prompt if it fails.
        return guard.checked_styles(prompt_tokens(self.ctx, self.ws))

    def ask(self, question: str, default: bool) -> bool:
        from prompt_toolkit import PromptSession

        choices = "[Y/n]" if default else "[y/N]"
        asker: PromptSession[str] = PromptSession(input=self.pt_input, output=self.pt_output)
        try:
            answer = asker.prompt(f"{question} {choices} ").strip().lower()
        except EOFError:
            # Ctrl-D at a question (or piped input ran out): not a yes, but the
            # caller may need to know there is no more input (see run()).
            self._eof_at_question = True
            return False
        except KeyboardInterrupt:
            return False
        return default if not answer else answer in ("y", "yes")

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        guard.install(self._internal_error)
        failures = 0
        try:
            if self.ws.tutor is not None:
                self.show(self.ws.tutor.welcome())
            self._session = self._new_session()
            while True:
                try:
                    text = self._session.prompt()
                    failures = 0
                except KeyboardInterrupt:
                    continue  # the line is cleared; nothing else happens
                except EOFError:
                    # A second Ctrl-D at the "tear it down?" question also quits:
                    # that is what it means in every shell.
                    self._eof_at_question = False
                    if self.quit_confirmed() or self._eof_at_question:
                        break
                    continue
                except Exception as exc:
                    # prompt_toolkit failed outside every guarded callback: show it,
                    # go on with a plain prompt. Only a plain prompt failing again
                    # and again (a broken terminal) ends the session.
                    failures += 1
                    guard.report("prompt", exc)
                    guard.flush()
                    if failures > 3:
                        raise
                    self._session = self._new_session(plain=True)
                    continue
                finally:
                    guard.flush()  # what a guarded callback reported while the prompt was up
                if self.handle(text):
                    break
        finally:
            self.close()
            guard.install(None)
        return self.status

    def _new_session(self, *, plain: bool = False) -> PromptSession[str]:
        if not plain:
            try:
                return self._build_cli()
            except Exception as exc:  # a completer, lexer, style... that cannot even be built
                guard.report("prompt", exc)
                guard.flush()
        return self._build_cli(plain=True)

    def _internal_error(self, line: str) -> None:
        from rich.text import Text

        self.ctx.console.print(Text(line, style="js.error"), soft_wrap=True)

    def quit_confirmed(self) -> bool:
        jail = self.ws.session.jail
        if jail is None or not self.ws.session.running:
            return True
        return self.ask(f"The jail (PID {jail.pid}) is running. Quit and tear it down?", True)

    def handle(self, text: str) -> bool:
        """Run one line; True when the learner asked to leave."""
        line = text.strip()
        if not line:
            default = enter_line(self.ws)
            if default is None:
                return False
            line = default
        try:
            if self.ctx.present and line.split()[0] in NEXT_WORDS and not self._present_confirm():
                return False
            with self._live_usage():
                result = self.ws.run_line(line)
            return self.show(result)
        except JailshellError as exc:
            self.status = int(exc.status)
            self.renderer.error(exc.message, exc.hint, getattr(exc, "unchanged", False))
        except KeyboardInterrupt:
            self.status = int(ExitStatus.CTRL_C)
            self.renderer.render(Message("Interrupted. The jail keeps every step that finished before Ctrl-C.",
                                         "warn"))
        except Exception:
            # A bug must not end the learner's session: show it and carry on.
            self.status = int(ExitStatus.ERROR)
            self.ctx.console.print(traceback.format_exc(), markup=False, highlight=False)
            self.renderer.render(Message("That was a bug in jailshell, not your mistake. The session goes on; "
                                         "`state` shows where the jail is.", "error"))
        return False

    @contextlib.contextmanager
    def _live_usage(self) -> Iterator[None]:
        """While a command runs in a jail that has a cgroup, its usage on one
        line, redrawn four times a second: the instructor's "watch the memory
        climb until the OOM killer strikes". Gone when the command ends; the
        step's report then shows before and after."""
        jail = self.ws.session.jail
        if not self.ctx.interactive or jail is None or not jail.alive or jail.cgroup is None:
            yield
            return
        from rich.live import Live
        from rich.text import Text

        from jailshell.ui.toolbar import cgroup_usage

        cg = jail.cgroup
        with Live(get_renderable=lambda: Text("live · " + cgroup_usage(cg), style="bold"), console=self.ctx.console,
                  refresh_per_second=4, transient=True):
            yield

    def _present_confirm(self) -> bool:
        tutor = self.ws.tutor
        pos = tutor.position() if tutor else None
        if pos is None:
            return True
        return self.ask("Run " + "; ".join(pos.step.run) + "?", True)

    def show(self, result: Any, *, on_screen: bool = False) -> bool:
        """Render a result, doing what it asks of the UI. True on Quit.
        on_screen: presenter mode has already started a screen for it."""
        if isinstance(result, Quit):
            self.status = result.status if result.status else self.status
            return True
        if isinstance(result, Confirm):
            follow = result.on_yes() if self.ask(result.question, result.default) else result.on_no
            return self.show(follow)
        if isinstance(result, Handover):
            self.renderer.render(result)
            self.ctx.stdout.flush()
            return self.show(result.run())
        # Presenter mode: one step per screen (a lesson step clears it itself).
        fresh = self.ctx.present and not on_screen and (
            isinstance(result, StepReport)
            or (isinstance(result, Results) and any(isinstance(item, StepReport) for item in result.items)))
        if fresh:
            self.renderer.new_screen()
        if isinstance(result, Results):
            return any([self.show(item, on_screen=on_screen or fresh) for item in result.items])
        self.status = int(ExitStatus.OK) if not _failed(result) else int(ExitStatus.ERROR)
        self.renderer.render(result)
        return False

    def close(self) -> None:
        try:
            self.ws.close()
        except JailshellError as exc:
            self.renderer.error(exc.message, exc.hint)
            self.status = int(exc.status)
        if self.use_history and self.ctx.history_path.exists():
            from jailshell.context import own_by_invoking_user

            own_by_invoking_user(self.ctx.history_path)


def prompt_tokens(ctx: AppContext, ws: Workspace) -> StyleAndTextTuples:
    """The prompt: `jailshell[HOSTNAME]> ` while a jail runs (▶ in presenter mode)."""
    if ctx.present:
        return [("class:prompt", "▶ ")]
    jail = ws.session.jail
    if jail is not None and jail.alive:
        return [("class:prompt", "jailshell"), ("class:prompt.jail", f"[{jail.state.hostname or jail.id}]"),
                ("", "> ")]
    return [("class:prompt", "jailshell"), ("", "> ")]


def enter_line(ws: Workspace) -> str | None:
    """What Enter on an empty line runs. A docker plan being walked comes first
    (the learner just typed `docker run ...` and was told Enter walks it),
    unless the lesson's own next step is to walk it: then the lesson does."""
    from jailshell.commands.docker_cmds import walking

    pos = ws.tutor.position() if ws.tutor is not None else None
    if walking(ws) and not (pos is not None and pos.step.run and pos.step.run[0].split()[0] == "walk"):
        return "walk"
    return "next" if ws.tutor is not None else None


def _failed(result: Any) -> bool:
    from jailshell.commands.results import CheckOutcome, LessonStepView

    if isinstance(result, LessonStepView):
        return (result.check is not None and not result.check.ok) or any(
            isinstance(r, Message) and r.level == "error" for r in result.results)
    if isinstance(result, CheckOutcome):
        return not result.ok
    return isinstance(result, Message) and result.level == "error"


def run_piped(ctx: AppContext, ws: Workspace) -> int:
    """Lines from a pipe or a file, through the same dispatcher; plain output;
    the exit status is that of the last command that failed."""
    from jailshell.ui.render import Renderer

    out = Renderer(ctx.console)
    failed = int(ExitStatus.OK)
    try:
        for number, raw in enumerate(ctx.stdin, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                result = ws.run_line(line)
            except JailshellError as exc:
                failed = int(exc.status)
                ctx.stdout.flush()
                print(f"jailshell: line {number}: {exc.message}", file=ctx.stderr)
                if exc.hint:
                    print(f"  hint: {exc.hint}", file=ctx.stderr)
                continue
            if _show_plain(out, result):
                break
            if _any_failed(result):
                failed = int(ExitStatus.ERROR)
    finally:
        try:
            ws.close()
        except JailshellError as exc:
            print(f"jailshell: {exc.message}", file=ctx.stderr)
            failed = int(exc.status)
    return failed


def _show_plain(out: Renderer, result: Any) -> bool:
    if isinstance(result, Quit):
        return True
    if isinstance(result, Confirm):  # without a terminal there is nobody to ask; commands do not ask then
        return _show_plain(out, result.on_yes())
    if isinstance(result, Results):
        return any([_show_plain(out, item) for item in result.items])
    out.render(result)
    return False


def _any_failed(result: Any) -> bool:
    if isinstance(result, Results):
        return any(_any_failed(r) for r in result.items)
    return _failed(result)
