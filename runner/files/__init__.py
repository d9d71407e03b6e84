"""The files a run reads and writes, shared by every backend: job files (`inputs`, plain or
`compression`), the result file that is also the checkpoint (`checkpoint`: read back, appended,
synced, locked; `lines` splits both), and the guard that keeps results out of job files (`guard`)."""
