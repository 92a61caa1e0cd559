"""``python -m rws`` (also what ``torchrun -m rws`` runs)."""

from rws.cli.app import app

app(prog_name="rws")
