"""The hosted Batch API backend: pending jobs split into batch files (`plan`), every remote
action journaled in `OUTPUT.batches` (`state`), the Files and Batches calls (`client`), what a
finished batch's line means for its jobs (`collect`), and the loop that submits, polls and
collects (`run`)."""
