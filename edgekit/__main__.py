from edgekit.cli import run

run()
