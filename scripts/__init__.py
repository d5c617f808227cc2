"""Command-line tools around the library, run from the repository root: python -m scripts.NAME."""
