"""VideoPredictor / StreamingTracker behaviour beyond the official oracle: objects added after
tracking started, streaming == offline, bounded streaming memory, video loading and bad input.
(End-to-end parity with the official predictor: tests/test_video_predictor_parity.py.)"""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from tam_jax.configs import get_config
from tam_jax.models.tam import init_params
from tam_jax.streaming import StreamingTracker
from tam_jax.video_io import VideoInputError, load_video_frames
from tam_jax.video_predictor import VideoPredictor

T, H, W = 20, 64, 80


def _video(num_frames=T, seed=0):
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(num_frames):
        img = rng.randint(30, 90, size=(H, W, 3)).astype(np.uint8)
        img[(yy - 30) ** 2 + (xx - 20 - 2 * t) ** 2 < 100] = (230, 40, 40)
        img[(abs(yy - 20) < 8) & (abs(xx - 60 + t) < 8)] = (40, 220, 40)
        frames.append(img)
    return np.stack(frames)


@pytest.fixture(scope="module")
def predictor():
    cfg = get_config("tiny", image_size=256)
    return VideoPredictor(cfg, init_params(cfg, 3), progress=False)


def _prompt_all(p, s):
    p.add_new_points_or_box(s, 0, "a", points=[[20, 30]], labels=[1])
    p.add_new_points_or_box(s, 0, "b", box=[52, 12, 68, 28])
    disc = np.zeros((H, W), bool)
    disc[25:35, 15:25] = True
    p.add_new_mask(s, 0, "c", disc)
    return disc


def test_streaming_equals_offline(predictor):
    video = _video()
    s = predictor.init_state(video)
    disc = _prompt_all(predictor, s)
    offline = {t: m for t, _, m in predictor.propagate_in_video(s)}

    tracker = StreamingTracker(predictor)
    idx, ids, masks = tracker.add_frame(video[0])
    assert (idx, ids, masks.shape) == (0, [], (0, 1, H, W))
    tracker.add_new_points_or_box("a", points=[[20, 30]], labels=[1])
    tracker.add_new_points_or_box("b", box=[52, 12, 68, 28])
    _, ids, first = tracker.add_new_mask("c", disc)
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(first, offline[0], atol=1e-4)
    worst = 0.0
    for t in range(1, T):
        idx, ids, masks = tracker.add_frame(video[t])
        assert idx == t and ids == ["a", "b", "c"]
        worst = max(worst, float(np.abs(masks - offline[t]).max()))
        assert ((masks > 0) == (offline[t] > 0)).mean() >= 0.999
    assert worst <= 1e-4, worst


def test_object_added_after_tracking_matches_tracking_it_alone(predictor):
    video = _video()
    s = predictor.init_state(video)
    predictor.add_new_points_or_box(s, 0, 1, points=[[20, 30]], labels=[1])
    list(predictor.propagate_in_video(s))  # tracking has started
    _, ids, _ = predictor.add_new_points_or_box(s, 6, 2, points=[[54, 20]], labels=[1])
    assert ids == [1, 2]
    together = {t: m[1] for t, _, m in predictor.propagate_in_video(s, start_frame_idx=6)}

    alone_state = predictor.init_state(video)
    predictor.add_new_points_or_box(alone_state, 6, 2, points=[[54, 20]], labels=[1])
    alone = {t: m[0] for t, _, m in predictor.propagate_in_video(alone_state)}
    assert sorted(together) == sorted(alone) == list(range(6, T))
    for t in alone:
        np.testing.assert_allclose(together[t], alone[t], atol=1e-5, err_msg=f"frame {t}")


def test_correction_clear_remove_reset(predictor):
    s = predictor.init_state(_video(12))
    _prompt_all(predictor, s)
    list(predictor.propagate_in_video(s))
    # a click on a tracked frame is a correction: non-conditioning, memory attended to
    _, _, before = predictor.add_new_points_or_box(s, 5, "a", points=[[40, 30]], labels=[0],
                                                   clear_old_points=False)
    assert 5 in s.temp_outputs[0]["non_cond"] and 5 not in s.outputs[0]["cond"]
    frames = [t for t, _, _ in predictor.propagate_in_video(s, start_frame_idx=5,
                                                            max_frame_num_to_track=3)]
    assert frames == [5, 6, 7, 8]
    # clearing the prompts of frame 0 downgrades it to a tracked frame
    predictor.clear_all_prompts_in_frame(s, 0, "b")
    assert 0 not in s.outputs[1]["cond"] and 0 in s.outputs[1]["non_cond"]
    ids, updated = predictor.remove_object(s, "c")
    assert ids == ["a", "b"] and [t for t, _ in updated] == [0]
    assert updated[0][1].shape == (2, 1, H, W)
    predictor.reset_state(s)
    assert s.obj_ids == []
    with pytest.raises(RuntimeError, match="no points, boxes or masks"):
        next(predictor.propagate_in_video(s))


def test_conditioning_capacity_is_an_error_not_corruption(predictor):
    p = VideoPredictor(predictor.cfg, predictor.params, cond_capacity=2, progress=False)
    s = p.init_state(_video(6))
    for t in (0, 2, 4):  # three prompted frames, never tracked: three conditioning frames
        p.add_new_points_or_box(s, t, 1, points=[[20, 30]], labels=[1])
    with pytest.raises(ValueError, match="more than the memory's 2 conditioning slots"):
        next(p.propagate_in_video(s))
    # the session is intact: drop one prompted frame and tracking goes on
    p.clear_all_prompts_in_frame(s, 4, 1)
    assert [t for t, _, _ in p.propagate_in_video(s)] == list(range(6))


def test_bad_input_gets_clear_errors(predictor, tmp_path):
    p = predictor
    with pytest.raises(VideoInputError, match=r"\(T, H, W, 3\)"):
        p.init_state(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(VideoInputError, match="uint8"):
        p.init_state(np.zeros((2, H, W, 3), np.float32))
    with pytest.raises(VideoInputError, match="no JPEG frames"):
        p.init_state(str(tmp_path))
    with pytest.raises(VideoInputError, match="no such video file"):
        p.init_state(str(tmp_path / "missing.mp4"))
    s = p.init_state(_video(4))
    with pytest.raises(IndexError, match="out of range: the video has 4 frames"):
        p.add_new_points_or_box(s, 4, 1, points=[[10, 10]], labels=[1])
    with pytest.raises(ValueError, match="outside the frame"):
        p.add_new_points_or_box(s, 0, 1, points=[[W + 5, 10]], labels=[1])
    with pytest.raises(ValueError, match="outside the frame"):
        p.add_new_points_or_box(s, 0, 1, box=[-3, 0, 10, 10])
    with pytest.raises(ValueError, match="labels must be 1"):
        p.add_new_points_or_box(s, 0, 1, points=[[10, 10]], labels=[2])
    with pytest.raises(ValueError, match="no foreground pixel"):
        p.add_new_mask(s, 0, 1, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="2-D"):
        p.add_new_mask(s, 0, 1, np.ones((H, W, 3), bool))
    with pytest.raises(KeyError, match="unknown object id 7"):
        p.clear_all_prompts_in_frame(s, 0, 7)
    with pytest.raises(KeyError, match="cannot remove object id 7"):
        p.remove_object(s, 7, strict=True)
    assert s.obj_ids == []  # nothing half-added by the failed calls
    tracker = StreamingTracker(p)
    with pytest.raises(RuntimeError, match="add_frame"):
        tracker.add_new_points_or_box(1, points=[[10, 10]], labels=[1])
    tracker.add_frame(_video(1)[0])
    with pytest.raises(VideoInputError, match="differs from the stream"):
        tracker.add_frame(np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(VideoInputError, match="RGB frame"):
        tracker.add_frame(np.zeros((H, W), np.uint8))


def test_jpeg_folder_and_mp4_loading(tmp_path):
    av = pytest.importorskip("av")  # the `video` extra; installed by `make test`
    from PIL import Image

    video = _video(5)
    folder = tmp_path / "jpg"
    folder.mkdir()
    for t, f in enumerate(video):  # numeric order, not lexicographic: 10 comes after 9
        Image.fromarray(f).save(folder / f"{t * 5}.jpg", quality=95)
    frames, h, w = load_video_frames(str(folder), 128)
    assert frames.shape == (5, 128, 128, 3) and frames.dtype == np.uint8 and (h, w) == (H, W)
    ref = np.asarray(Image.open(folder / "20.jpg").convert("RGB").resize((128, 128)))
    np.testing.assert_array_equal(frames[4], ref)

    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames, h, w = load_video_frames(path, 128)
    assert frames.shape == (5, 128, 128, 3) and (h, w) == (H, W)
    direct, _, _ = load_video_frames(video, 128)
    # lossy codec: close to the source frames, not equal
    assert np.abs(frames.astype(int) - direct.astype(int)).mean() < 12
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoInputError, match="broken.mp4"):
        load_video_frames(str(bad), 128)


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def test_streaming_memory_is_bounded_over_1000_frames(predictor):
    """RSS flat over 1,000 frames at 256 input: the bank has a fixed shape and the tracker
    keeps no per-frame state (the offline predictor, like the official, keeps every frame)."""
    tracker = StreamingTracker(predictor)
    video = _video(50)
    tracker.add_frame(video[0])
    tracker.add_new_points_or_box(1, points=[[20, 30]], labels=[1])
    tracker.add_new_points_or_box(2, box=[52, 12, 68, 28])
    rss = {}
    for t in range(1, 1000):
        if t == 500:  # a correction mid-stream: same shapes, no growth
            tracker.add_new_points_or_box(1, points=[[25, 30]], labels=[1])
        idx, ids, masks = tracker.add_frame(video[t % 50])
        assert idx == t and masks.shape == (2, 1, H, W)
        if t in (100, 999):
            rss[t] = _rss_mib()
    print(f"\n[streaming] RSS after frame 100: {rss[100]:.1f} MiB, after 999: {rss[999]:.1f} MiB")
    assert rss[999] - rss[100] < 25.0, rss
