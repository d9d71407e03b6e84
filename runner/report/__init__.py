"""What a run and a job file tell the user: run statistics (`stats`), live progress and status
lines (`progress`), the summary (`summary`) and log (`log`), `runner estimate` and `runner status`
(`estimate`, `status`, `render`), and what tokens cost (`prices`, `prices.toml`)."""
