"""Tests of code in this process only: seconds to run (`PYTEST_ARGS="-m unit"`)."""
