"""Wrong settings fail when they are set (a config file: as the server starts), with a
message that names the setting, the entry and what is wrong; nothing waits for a first
request to find out."""

from __future__ import annotations

from typing import Any

import pytest
from traitlets import TraitError

from jupyter_lowcost.backends.slurm import SlurmBackend
from jupyter_lowcost.server.app import LowCostApp

T4 = {"name": "T4", "gpu": "NVIDIA T4", "price_regular": 0.53, "price_low_cost": 0.16}


@pytest.mark.parametrize(
    "catalog, words",
    [
        ([], "LowCostApp.instance_types is empty"),
        ([{"name": "T4", "gpu": "NVIDIA T4"}], "instance_types[0] lacks price_regular"),
        ([T4, "A100"], "expected a dict, not the str 'A100'"),
        ([{**T4, "price_low_cost": "cheap"}], "instance_types[0] ('T4')"),
        ([{**T4, "price_regular": -1}], "prices cannot be negative"),
        ([T4, T4], "the name 'T4' appears twice"),
    ],
)
def test_a_wrong_catalog_is_refused_when_set(catalog: list[Any], words: str) -> None:
    app = LowCostApp()
    before = app.instance_types
    with pytest.raises(TraitError) as raised:
        app.instance_types = catalog
    assert words in str(raised.value)
    assert app.instance_types == before  # (nothing changed)


def test_a_right_catalog_is_taken() -> None:
    app = LowCostApp()
    app.instance_types = [T4]
    assert app.instance_types == [T4]


@pytest.mark.parametrize(
    "types, words",
    [
        ({"T4": "gpu"}, "SlurmBackend.instance_types['T4'] must be a dict, not str"),
        ({"T4": {"partition": "gpu"}}, "SlurmBackend.instance_types['T4'] has unknown key(s)"),
    ],
)
def test_a_wrong_slurm_type_setting_is_refused_when_set(types: dict, words: str) -> None:
    with pytest.raises(TraitError) as raised:
        SlurmBackend(None, instance_types=types)
    assert words in str(raised.value)
