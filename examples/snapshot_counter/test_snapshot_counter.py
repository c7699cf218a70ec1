"""A VM restored from a snapshot file continues its counter where it stopped."""

from __future__ import annotations

import pytest

from kvmharness.testing import (
    capture,
    expect_sync,
    load_state_file,
    read_symbol,
    restore_guest,
    run_until_done,
    write_snapshot,
    write_symbol,
)


@pytest.mark.kvm
@pytest.mark.timeout(60)
def test_counter_continues_after_restore(kvm, make_guest, tmp_path):
    gvm = make_guest(source="counter_guest.c")  # found next to this file
    write_symbol(gvm, "last_tick", 6)
    for expected in (1, 2, 3):
        assert expect_sync(gvm, gvm.vcpus[0]) == [expected]

    # Save the stopped VM to a file, throw the VM away, bring it back.
    path = tmp_path / "counter.snap"
    write_snapshot(path, *capture(gvm.vm, program=gvm.program).to_snapshot())
    gvm.close()
    state = load_state_file(str(path))

    with restore_guest(kvm, state) as again:
        assert read_symbol(again, "ticks") == 3
        syncs = run_until_done(again, again.vcpus[0])  # a GUEST_ASSERT raises here
        assert [uc.args[0] for uc in syncs] == [4, 5, 6]
        assert read_symbol(again, "ticks") == 6
