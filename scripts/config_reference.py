"""Write docs/configuration.md from the daemons' commands (every key of every config file)."""

from __future__ import annotations

from pathlib import Path

from stockade.cli.daemon_options import reference_page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

if __name__ == "__main__":
    PAGE.write_text(reference_page())
    print(f"wrote {PAGE}")
