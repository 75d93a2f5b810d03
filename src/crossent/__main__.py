"""``python -m crossent`` runs the command-line interface."""

from crossent.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
