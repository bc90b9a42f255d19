from __future__ import annotations

import pytest

from lsea_monitor.errors import InputValidationError
from lsea_monitor.pipeline import Hysteresis


def run(h: Hysteresis, seq: str) -> str:
    return "".join("1" if h.update(c == "1") else "0" for c in seq)


def test_starts_raised_and_clears_after_m_ind_frames() -> None:
    h = Hysteresis(raise_after=2, window=3, clear_after=3)
    assert h.flag is True  # fail closed until enough good frames
    assert run(h, "0000") == "1100"


def test_raises_after_k_of_n_and_ignores_isolated_ood() -> None:
    h = Hysteresis(raise_after=2, window=3, clear_after=2, initial_flag=False)
    assert run(h, "0100") == "0000"  # one OoD frame in a window of 3 is noise
    assert run(h, "101") == "001"  # raised once 2 of the last 3 are OoD
    assert run(h, "00") == "10"  # clears after 2 consecutive InD frames


def test_force_raise_counts_as_ood_and_resets_clear_counter() -> None:
    h = Hysteresis(raise_after=3, window=3, clear_after=2, initial_flag=False)
    assert h.force_raise() is True
    assert run(h, "0") == "1"
    assert run(h, "0") == "0"


@pytest.mark.parametrize("kw, match", [({"raise_after": 0}, "raise_after"), ({"raise_after": 4, "window": 3}, "raise_after"),
                                       ({"clear_after": 0}, "clear_after")])
def test_invalid_parameters(kw: dict, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        Hysteresis(**kw)
