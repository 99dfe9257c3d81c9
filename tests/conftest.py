"""Makes the shared optd fixtures (tests/optd_testing.py) available to every test module here."""

from optd_testing import optd_server  # noqa: F401  (re-exported pytest fixture)
