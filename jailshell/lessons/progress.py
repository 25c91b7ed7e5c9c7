"""Where the learner is in each course, by lesson and step id (never by
position: an edited course keeps everyone's progress).

One small JSON file under the invoking user's state dir, written through a
temporary file and os.replace so a crash never leaves half a file. A damaged
file is set aside (progress.json.damaged) and the course starts over, with a
note to say so, instead of stopping the learner at the door.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell.errors import JailshellError

FORMAT = 1


@dataclass
class CourseProgress:
    position: tuple[str, str] | None = None  # (lesson id, step id) of the next step to run
    done: dict[str, list[str]] = field(default_factory=dict)  # lesson id -> step ids done, in order

    def to_json(self) -> dict[str, Any]:
        return {"position": list(self.position) if self.position else None, "done": self.done}

    @classmethod
    def from_json(cls, data: Any) -> CourseProgress:
        if not isinstance(data, dict):
            raise ValueError("a course entry is not an object")
        pos = data.get("position")
        position = None
        if pos is not None:
            if not (isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, str) for x in pos)):
                raise ValueError("position is not [lesson, step]")
            position = (pos[0], pos[1])
        done = data.get("done") or {}
        if not isinstance(done, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                                 for v in done.values()):
            raise ValueError("done is not {lesson: [steps]}")
        return cls(position, {str(k): list(v) for k, v in done.items()})


@dataclass
class Progress:
    path: Path | None  # None: kept in memory only (`play`, `handout` leave the learner's progress alone)
    courses: dict[str, CourseProgress] = field(default_factory=dict)
    # Set when the file could not be read: what happened to it, for the welcome screen.
    warning: str | None = None

    @classmethod
    def memory(cls) -> Progress:
        return cls(None)

    @classmethod
    def load(cls, path: Path) -> Progress:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            return cls(path, warning=f"could not read your progress ({exc.strerror}); starting from the beginning")
        try:
            return cls(path, _parse(json.loads(raw)))
        except (ValueError, TypeError) as exc:
            aside = path.with_name(path.name + ".damaged")
            try:
                os.replace(path, aside)
                kept = f"; the old file is kept as {aside.name}"
            except OSError:
                kept = ""
            return cls(path, warning=f"your progress file was damaged ({exc}){kept}; starting from the beginning")

    def course(self, course_id: str) -> CourseProgress:
        return self.courses.setdefault(course_id, CourseProgress())

    def mark_done(self, course_id: str, lesson_id: str, step_id: str) -> None:
        steps = self.course(course_id).done.setdefault(lesson_id, [])
        if step_id not in steps:
            steps.append(step_id)

    def set_position(self, course_id: str, position: tuple[str, str] | None) -> None:
        self.course(course_id).position = position

    def reset(self, course_id: str, lesson_id: str | None = None) -> None:
        c = self.course(course_id)
        if lesson_id is None:
            self.courses[course_id] = CourseProgress()
        else:
            c.done.pop(lesson_id, None)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "courses": {k: v.to_json() for k, v in self.courses.items()}}

    def save(self) -> None:
        from jailshell.context import ensure_state_dir, own_by_invoking_user

        if self.path is None:
            return
        ensure_state_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".progress-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            own_by_invoking_user(Path(tmp))
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def export(self, dest: Path) -> None:
        try:
            dest.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        except OSError as exc:
            raise JailshellError(f"cannot write {dest}: {exc.strerror}") from None

    def import_(self, src: Path) -> int:
        """Merge progress exported elsewhere: steps done are added, the imported
        position wins. Returns how many steps were new here."""
        try:
            other = _parse(json.loads(src.read_text(encoding="utf-8")))
        except OSError as exc:
            raise JailshellError(f"cannot read {src}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise JailshellError(f"{src} is not a jailshell progress file ({exc})",
                                 hint="use a file written by `progress export`") from None
        added = 0
        for course_id, theirs in other.items():
            mine = self.course(course_id)
            for lesson_id, steps in theirs.done.items():
                have = mine.done.setdefault(lesson_id, [])
                for s in steps:
                    if s not in have:
                        have.append(s)
                        added += 1
            if theirs.position:
                mine.position = theirs.position
        return added


def _parse(data: Any) -> dict[str, CourseProgress]:
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("courses"), dict):
        raise ValueError(f"not a format {FORMAT} progress file")
    return {str(k): CourseProgress.from_json(v) for k, v in data["courses"].items()}
