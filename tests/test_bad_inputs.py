"""Compatibility only, no tests: tests/test_confounds_app.py and tests/test_confounds_hostile.py still import
`check_error` from here; it lives in tests/stage_inputs.py (the catalogue is tests/test_cli_hostile.py). Delete this
file once those two import it from stage_inputs."""

from stage_inputs import check_error

__all__ = ["check_error"]
