"""SceneConfig: the synthetic scenes' difficulty knobs (object size, speed, distractors)."""

import numpy as np
import pytest

from input_pipeline import synthetic


def _mean_area(scene, seeds=range(6)):
    return np.mean([synthetic.render_video(s, 64, 64, 1, 2, scene=scene)[1].sum((-1, -2)).max()
                    for s in seeds])


def test_defaults_are_the_scenes_the_tests_were_written_on():
    a = synthetic.render_video(7, 32, 48, 5, 2)
    b = synthetic.render_video(7, 32, 48, 5, 2,
                               scene=synthetic.SceneConfig((0.08, 0.2), (0.3, 1.5), 1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_size_and_speed_follow_the_config():
    small = synthetic.SceneConfig(radius=(0.1, 0.1))
    large = synthetic.SceneConfig(radius=(0.25, 0.25))
    assert _mean_area(large) > 3 * _mean_area(small)
    # no speed: every visible mask stays where it was (object 1 always leaves: use object 0)
    _, m = synthetic.render_video(3, 64, 64, 8, 1,
                                  synthetic.SceneConfig(speed=(0.0, 0.0), distractors=0))
    assert m[0, 0].sum() > 0
    centres = [np.argwhere(m[t, 0]).mean(0) for t in range(8)]
    assert np.abs(np.diff(centres, axis=0)).max() < 2.0  # growth / spin only


@pytest.mark.parametrize("bad", [dict(radius=(0.3, 0.1)), dict(speed=(-1.0, 1.0)),
                                 dict(distractors=-1)])
def test_bad_scene_is_an_error(bad):
    with pytest.raises(ValueError, match="SceneConfig"):
        synthetic.SceneConfig(**bad)


def test_cli_rejects_a_bad_range(tmp_path, capsys):
    from scripts import make_synthetic_data

    with pytest.raises(SystemExit):
        make_synthetic_data.main(["--out", str(tmp_path), "--object_size", "0.3", "0.1"])
    assert "SceneConfig.radius" in capsys.readouterr().err
