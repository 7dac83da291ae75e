"""The distribution carries every subpackage and data file the code needs (a wheel, not only an editable install)."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_every_subpackage_is_listed():
    config = _setup()
    listed = set(config["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found - listed == set(), "add these to setup.cfg [options] packages"


def test_package_data_covers_the_data_folder():
    patterns = _setup()["options.package_data"]["avemo"].replace(",", " ").split()
    shipped = {p for pattern in patterns for p in (ROOT / "avemo").glob(pattern)}
    assert set((ROOT / "avemo" / "data").iterdir()) <= shipped
