"""``python -m leanlm.bis ...``: the bis commands without importing the other modules' CLIs (no torch import)."""

from leanlm.bis.cli import app

app(prog_name="python -m leanlm.bis")
