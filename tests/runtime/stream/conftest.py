"""Fixtures of the stream tests: a 7-s talking-face clip."""

import pytest

from avemo.runtime.media.sample import write_media


@pytest.fixture(scope="module")
def long_media(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("stream") / "long.mp4", seconds=7.0)
