"""The `gradloop` command: main.py holds run, validate, plugins and sync; job_commands.py holds
serve, submit, jobs, status, cancel and logs.

Nothing is imported here: `python -m gradloop.cli.main` would otherwise find its own module
already imported by this package and run it a second time (runpy's RuntimeWarning)."""
