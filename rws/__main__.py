"""``python -m rws`` (also what ``torchrun -m rws`` runs)."""

from rws.cli import app

app(prog_name="rws")
