"""The hosted Batch API backend: pending jobs split into batch files (`plan`), every remote
action journaled in `OUTPUT.batches` (`state`), the Files and Batches calls (`client`), and the
loop that submits, polls and collects (`run`)."""
