"""`python -m gradloop ...` (and `torchrun -m gradloop ...`) is the `gradloop` command."""

from gradloop.cli.main import main

if __name__ == "__main__":
    main()
