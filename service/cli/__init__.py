"""The `gradloop` command: main.py holds run, validate, plugins and sync; job_commands.py holds
serve, submit, jobs, status, cancel and logs."""

from gradloop.cli.main import main

__all__ = ["main"]
