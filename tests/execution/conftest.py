"""Fixtures of the execution tests: a small zoo network with evaluation data (built once)."""

from __future__ import annotations

import exekit
import pytest


@pytest.fixture(scope="session")
def zoo_case(tmp_path_factory: pytest.TempPathFactory) -> exekit.Case:
    return exekit.zoo_case(tmp_path_factory.mktemp("exec-zoo"))
