"""Start-up warns when the kernel resets connections queued on a closing SO_REUSEPORT listener
(net.ipv4.tcp_migrate_req=0, SPEC §9.1); test_workers_follow_their_supervisor.py checks that
serve with workers: 2 logs it on a machine where the knob is 0."""

from __future__ import annotations

from admin.serve import reuseport_migration


def test_the_warning_names_the_knob_when_it_is_0(tmp_path):
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("0\n")
    warning = reuseport_migration(str(knob))
    assert warning is not None and "net.ipv4.tcp_migrate_req is 0" in warning and "sysctl -w" in warning


def test_no_warning_when_it_is_1_or_the_kernel_has_no_such_knob(tmp_path):
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("1\n")
    assert reuseport_migration(str(knob)) is None
    assert reuseport_migration(str(tmp_path / "absent")) is None
