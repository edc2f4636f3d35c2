"""The task and layout registries (DESIGN.md section 4), in timm's manner: each module in
edgekit/runtime/tasks/ and edgekit/runtime/layouts/ registers what it defines with a decorator, and the
registry imports those modules the first time it is asked, so adding a layout is adding one module.

A *task* (detection, segmentation, ...) owns its result type, drawing, JSON form, accuracy metric and INT8
agreement measure; a *layout* owns how a model's raw outputs look, its checks against the card and the
decoding into the task's result. Nothing outside those modules tests a task's name."""

import difflib
import importlib
import pkgutil
from typing import Any, Dict, List, Optional, TypeVar

from edgekit.errors import EdgekitError

T = TypeVar("T")
_TASKS: Dict[str, Any] = {}
_LAYOUTS: Dict[str, Any] = {}
_LOADED: Dict[str, bool] = {}


def register_task(cls: T) -> T:
    """Class decorator: one instance of this Task subclass serves every model of its task."""
    task = cls()  # type: ignore[operator]
    _TASKS[task.name] = task
    return cls


def register_layout(cls: T) -> T:
    """Class decorator: one instance of this Layout subclass decodes every model with its outputs."""
    layout = cls()  # type: ignore[operator]
    _LAYOUTS[layout.name] = layout
    return cls


def _load(package: str) -> None:
    """Import every module of a registering package once (each registers what it defines)."""
    if _LOADED.get(package):
        return
    _LOADED[package] = True
    pkg = importlib.import_module(package)
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{m.name}")


def lookup(table: Dict[str, Any], kind: str, name: str) -> Any:
    """table[name], or a one-line error naming the close matches (or everything known)."""
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(table))}"
        raise EdgekitError(f"unknown {kind} '{name}' ({hint})")
    return table[name]


def task(name: str) -> Any:
    """The registered Task called `name` (edgekit.runtime.tasks.base.Task)."""
    _load("edgekit.runtime.tasks")
    return lookup(_TASKS, "task", name)


def layout(name: str) -> Any:
    """The registered Layout called `name` (edgekit.runtime.layouts.base.Layout)."""
    _load("edgekit.runtime.layouts")
    return lookup(_LAYOUTS, "output layout", name)


def task_names() -> List[str]:
    _load("edgekit.runtime.tasks")
    return list(_TASKS)


def layouts(task_name: Optional[str] = None) -> List[Any]:
    """Every registered layout, or those of one task; a task's default layout first."""
    _load("edgekit.runtime.layouts")
    found = [lay for lay in _LAYOUTS.values() if task_name is None or lay.task == task_name]
    return sorted(found, key=lambda lay: (lay.task, not lay.default, lay.name))


def default_layout(task_name: str) -> str:
    """The layout a card of this task gets when it names none (edgekit's own models' outputs)."""
    for lay in layouts(task_name):
        if lay.default:
            return lay.name
    raise EdgekitError(f"no output layout is registered for task '{task_name}'")
