"""Everything that does the work; importable without Typer."""
