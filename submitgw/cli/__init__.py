"""Command line: `submitgw [--config PATH] COMMAND …`."""


def main() -> None:
    raise SystemExit("not yet")
