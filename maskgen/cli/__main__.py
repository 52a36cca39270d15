"""`python -m maskgen.cli ...` is `maskgen ...` (torchrun starts the trainer this way)."""

from maskgen.cli import app

app(prog_name="maskgen")
