"""What jailshell starts with: every command in a fresh registry, the checks,
the course (validated against both), and the workspace that ties them up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jailshell.commands import cgroup_cmds, course_cmds, docker_cmds, image_cmds, jail_cmds, net_cmds
from jailshell.commands.registry import Registry

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.context import AppContext
    from jailshell.lessons.spec import Course


def default_registry() -> Registry:
    return Registry([
        *jail_cmds.commands(),
        *cgroup_cmds.commands(),
        *course_cmds.commands(),
        *docker_cmds.commands(),
        *net_cmds.commands(),
        *image_cmds.commands(),
    ])


def load_course(path: Path | None = None, registry: Registry | None = None) -> Course:
    """The course at PATH (default: the shipped one), checked against the real
    commands and checks: a lesson cannot name one that does not exist."""
    from jailshell.lessons.checks import default_checks
    from jailshell.lessons.loader import default_path
    from jailshell.lessons.loader import load_course as load

    registry = registry or default_registry()
    return load(path or default_path(), check_command=registry.check_lesson_line,
                check_check=default_checks().validate)


def build_workspace(ctx: AppContext, *, lessons: Path | None = None, image: str | None = None,
                    with_course: bool = True, keep_progress: bool = True) -> Workspace:
    """keep_progress=False: progress lives in memory only (play, handout)."""
    from jailshell.commands.tutor import Tutor
    from jailshell.commands.workspace import Workspace
    from jailshell.lessons.checks import default_checks
    from jailshell.lessons.progress import Progress

    registry = default_registry()
    tutor = None
    if with_course:
        progress = Progress.load(ctx.progress_path) if keep_progress else Progress.memory()
        tutor = Tutor(load_course(lessons, registry), progress)
    return Workspace(ctx, registry, default_checks(), tutor, image)
