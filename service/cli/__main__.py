"""`python -m gradloop.cli ...` is the `gradloop` command."""

from gradloop.cli.main import main

if __name__ == "__main__":
    main()
