"""The error tree drawn in `runner.errors`' docstring names every exception class that runner and
jobs define, so a newcomer finds each one there (with where it lives and what it does)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import jobs
import runner
import runner.errors


def defined_exceptions() -> set[str]:
    names = set()
    for package in (runner, jobs):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__ == module.__name__):
                    names.add(name)
    return names


def test_the_error_tree_names_every_exception_class_runner_defines():
    defined = defined_exceptions()
    assert {"RunnerError", "StopRunError", "DownloadFailed", "RedisLost", "StatusError"} <= defined
    missing = sorted(name for name in defined
                     if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", runner.errors.__doc__))
    assert not missing, f"not in runner/errors.py's tree: {missing}"
