"""runner: an async batch job runner for OpenAI-compatible APIs (see README.md and docs/).

From Python (`runner.client`; loaded on first use, so `runner --help` imports none of it)::

    import runner
    summary = runner.run("jobs.jsonl", "results.jsonl", rpm=500)
    for result in runner.results("results.jsonl", jobs="jobs.jsonl"):
        ...

`jobs`, the pure core beside this package, is installed as a top-level package of its own (see
docs/architecture.md, "The installed name `jobs`"). Importing runner pins the name `jobs` to that
package, the one installed with this runner, so a `jobs.py` or `jobs/` in the current folder (which
`python -m runner` puts first on `sys.path`) can never stand in for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.client import Result, RunOptions, RunSummary, results, run, run_async

__all__ = ["run", "run_async", "results", "RunOptions", "RunSummary", "Result"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runner import client
        return getattr(client, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


def _pin_jobs() -> None:
    import importlib.util
    import sys
    from pathlib import Path

    init = Path(__file__).resolve().parent.parent / "jobs" / "__init__.py"
    loaded = sys.modules.get("jobs")
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == init:
            return
        raise ImportError(f"a module named 'jobs' ({getattr(loaded, '__file__', loaded)!r}) was "
                          f"imported before runner's own ({init}): rename it, or run from "
                          "another folder")
    if not init.is_file():
        return  # not beside us (an unusual install): the ordinary import decides
    spec = importlib.util.spec_from_file_location("jobs", init,
                                                  submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["jobs"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["jobs"]
        raise


_pin_jobs()
