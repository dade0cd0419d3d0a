"""`missing_prerequisite` (tests/conftest.py): a skip on a developer's machine, a failure under CI.

Both outcomes are exceptions pytest turns into a result; each test catches whichever comes (a skip would
otherwise just skip the test) and checks its kind. Broken variant tried: `missing_prerequisite` skipping
whatever CI says: the CI cases fail."""
import pytest

from tests.conftest import missing_prerequisite


def _outcome(reason: str) -> pytest.ExceptionInfo:
    with pytest.raises(BaseException) as raised:
        missing_prerequisite(reason)
    return raised


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_a_missing_prerequisite_fails(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    outcome = _outcome("apt-get could not install SLURM")
    assert outcome.type is pytest.fail.Exception, outcome
    assert "CI: apt-get could not install SLURM" in str(outcome.value)


@pytest.mark.parametrize("value", [None, "", "false"])
def test_elsewhere_a_missing_prerequisite_skips(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    outcome = _outcome("the local SLURM cluster needs root")
    assert outcome.type is pytest.skip.Exception, outcome
    assert "needs root" in str(outcome.value)
