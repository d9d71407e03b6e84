"""The `runner` command and `python -m runner`: the command line of `runner.cli.main`, started and
ended without garbage-collection work that finds nothing.

Everything imported at start-up (modules, classes, functions: most of the objects a short run
ever has) lives until the process ends. So the collector is off while they are made, and they are
then frozen (`gc.freeze`): later collections skip them, which also leaves the interpreter's final
collections at exit almost nothing to scan. Objects made later are collected as usual, and
whatever is still alive at the end of a successful command is frozen too: the process's end frees
it. (After a failure the final collections run in full, so asyncio's and aiohttp's warnings about
what was left open still show.) The command itself
closes what it opened (output, lock, log file, HTTP session) before it returns.

Large blocks a command frees go back to the system as they are freed (`runner.heap`): a run's
peak memory is what it holds, not what glibc kept of what it held before.
"""
import gc

from runner.heap import return_freed_memory


def main() -> None:
    return_freed_memory()
    gc.disable()
    try:
        from runner.cli.main import main as command
    finally:
        gc.freeze()
        gc.enable()
    try:
        command()
    except SystemExit as done:
        if done.code in (0, None):  # else the final collections may still report what leaked
            gc.freeze()
        raise


if __name__ == "__main__":
    main()
