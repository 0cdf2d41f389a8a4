"""taskyard-api: the task API (and its dashboard) over the Task resources."""
