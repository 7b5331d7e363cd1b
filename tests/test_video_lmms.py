"""The lmms-eval plugin's video handling that needs no lmms-eval: lmms-eval's video tasks hand ``doc_to_visual``
a list with the video's path; the plugin samples its frames as Video-LLaVA does and counts one kept entry per
video (tests_lmms/ runs the plugin inside the real lmms-eval)."""
from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("av")

from video_fixtures import frame_colour, write_video  # noqa: E402


def test_video_paths_become_sampled_frames(tmp_path):
    from vlprune.lmms_plugin_batch import is_video, visuals_of

    clip = write_video(tmp_path / "v_clip.mkv", n_frames=12)
    doc = {"video": str(clip)}
    visuals = visuals_of(lambda d: [d["video"]], doc)
    assert len(visuals) == 1 and is_video(visuals[0]) and visuals[0].shape == (8, 24, 32, 3)
    assert [int(f[0, 0, 0]) for f in visuals[0]] == [frame_colour(i)[0] for i in (0, 1, 3, 4, 6, 7, 9, 11)]
    four = visuals_of(lambda d: d["video"], doc, num_frames=4)[0]  # a bare path, 4 frames: linspace(0, 11, 4)
    assert [int(f[0, 0, 0]) for f in four] == [frame_colour(i)[0] for i in (0, 3, 7, 11)]
    mixed = visuals_of(lambda d: [Image.new("RGB", (4, 4)), clip], doc)
    assert [is_video(v) for v in mixed] == [False, True]


def test_kept_counts_take_one_entry_per_video():
    from types import SimpleNamespace

    import torch

    from vlprune.lmms_plugin_batch import kept_per_request

    # a video is one entry of KeptTokens (its frames stacked on one grid): 2 requests, an image+video and a video
    kept = SimpleNamespace(indices=[torch.arange(3), torch.arange(20), torch.arange(9)],
                           grids=[(4, 4), (32, 4), (32, 4)])
    assert kept_per_request(kept, [2, 1]) == [[(3, 16), (20, 128)], [(9, 128)]]


def test_chat_prompt_places_videos_after_images():
    from vlprune.bench.runner import chat_prompt

    assert chat_prompt(object(), "what happens?", 0, 1) == "USER: <video>\nwhat happens? ASSISTANT:"
    assert chat_prompt(object(), "q", 1, 1) == "USER: <image>\n<video>\nq ASSISTANT:"

    class Templated:
        chat_template = "x"

        def apply_chat_template(self, conversation, add_generation_prompt):
            return [part["type"] for part in conversation[0]["content"]]

    assert chat_prompt(Templated(), "q", 1, 2) == ["image", "video", "video", "text"]
