"""tests: the cutover test suite, a package so that every module is imported by its full name.

proxy/ holds socket-free tests of the data plane, admin/ socket-free or single-component tests
of the control plane, e2e/ everything that starts real proxies, backends, admin servers or
processes on loopback; support/ is the one package of helpers they share (``tests.support``),
its fixtures registered as a pytest plugin by conftest.py.
"""
