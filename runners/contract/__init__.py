"""The run folder's contract, one module a job: `errors` (bad input), `layout` (file names), `choices` (statuses,
methods, what trials keep, losses), `scores` (the metric registry and the main metric), `files` (atomic writes,
modes, sizes, JSON lines), `store` (a run folder on disk or in storage) and `result` (result.json and trial.json).

Every package reads the run folder through these modules: `runners` writes trial folders, `grid` schedules and
summarises them, `analysis` reads them back. They import the standard library only, so importing the contract
never pulls in torch, ray or pandas (`tests/test_architecture.py` holds them to that).
"""
