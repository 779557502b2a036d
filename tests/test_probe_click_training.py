"""scripts/probe_click_training.py: the fixed batch it trains on."""

from __future__ import annotations

import numpy as np

from scripts.probe_click_training import box_batch


def test_box_batch_objects_are_visible_boxes_with_one_padded_slot():
    batch = box_batch(3, 128)
    assert batch["images"].shape == (3, 1, 128, 128, 3)
    assert batch["masks"].shape == (3, 1, 2, 128, 128)
    assert batch["obj_valid"].tolist() == [[True, False], [True, True], [True, True]]
    for i in range(3):
        for k in range(2):
            m = batch["masks"][i, 0, k]
            assert m.sum() == 30 * 40
            # every object pixel shows the object's colour, so a click can find it
            np.testing.assert_array_equal(batch["images"][i, 0][m], [[200, 40 * k, 90]] * 1200)
