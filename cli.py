"""The esl-cb command line."""
from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="esl-cb")
def main() -> None:
    """esl-cb: queued callbacks for FreeSWITCH contact centres."""


if __name__ == "__main__":
    main()
