"""The files a run reads and writes, shared by every backend: job files (`inputs`, plain or
`compression`), the result file that is also the checkpoint (`checkpoint`: read back, appended,
synced, locked; `lines` splits both), and the guard that keeps results out of job files (`guard`).

Files runner creates that hold what jobs asked or answered (the output, the batch journal and its
folder of chunk files and downloads, image files, a merged output) are created private to their
owner, whatever the umask allows (a stricter umask still applies); a file that already exists keeps
the mode it has: runner appends to it and never changes its mode. See docs/security.md."""

PRIVATE_FILE = 0o600  # new files holding job data: owner read and write only
PRIVATE_DIR = 0o700   # new folders holding them
