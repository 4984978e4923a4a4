"""The interpreter settings yolotune's CLI applies to its own process are undone afterwards."""

import gc
import sys

from yolotune.interpreter import freeze_startup_objects, tuned_for_threads


def test_tuned_for_threads_sets_and_restores():
    before = sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    with tuned_for_threads(0.002):
        assert abs(sys.getswitchinterval() - 0.002) < 1e-9
        assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0


def test_an_application_that_froze_objects_itself_keeps_its_freeze():
    gc.freeze()
    try:
        kept = gc.get_freeze_count()
        assert freeze_startup_objects() is False  # not ours to unfreeze
        assert gc.get_freeze_count() >= kept  # frozen all the same: the run is protected
        with tuned_for_threads():
            pass
        assert gc.get_freeze_count() >= kept  # not unfrozen behind its back
    finally:
        gc.unfreeze()


def test_switch_interval_none_leaves_it_and_any_value_is_restored():
    from yolotune.interpreter import switch_interval

    before = sys.getswitchinterval()
    with switch_interval(None):
        assert sys.getswitchinterval() == before
    with switch_interval(0.0005):
        assert abs(sys.getswitchinterval() - 0.0005) < 1e-9
    assert sys.getswitchinterval() == before
