"""`python -m avemo.train ...` = `avemo train ...`: the entry torchrun starts in every process.

torchrun --standalone --nproc-per-node 2 -m avemo.train --data cache/ --regime colearn --out runs/colearn
"""

import os
from pathlib import Path

import click

from avemo.cli import HELP_OPTIONS, friendly
from avemo.train.cli import RELAUNCHED_ENV, train


def main() -> None:
    errors = os.environ.get(RELAUNCHED_ENV)
    if not errors:
        friendly(train)(prog_name="avemo.train", **HELP_OPTIONS)
        return
    try:  # started by `avemo train --nproc N`: the error line goes to it, which prints it once
        friendly(train).main(prog_name="avemo.train", standalone_mode=False)
    except click.ClickException as exc:
        (Path(errors) / f"rank{os.environ.get('RANK', '0')}.txt").write_text(exc.format_message())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
