"""lmms-eval video requests (``doc_to_visual`` -> the video's path, as lmms-eval's video tasks do) through the
plugin, on a tiny random Video-LLaVA: the frames Video-LLaVA samples reach the model as ``videos=``, pruned, with
one kept entry per video.  The processor is the tests' stand-in for transformers' VideoLlavaProcessor, whose
video processor needs torchvision (not in .venv-lmms)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from video_fixtures import TinyVideoLlavaProcessor, frame_colour, write_video  # noqa: E402

from toy_task import KEEP  # noqa: E402

VIDEO_KEEP = 40  # of a tiny 8-frame video's 8 x 16 patches


def test_video_requests_reach_the_model_as_sampled_frames(toy, tmp_path):
    import vlprune
    from vlprune.evaluation import LoadedModel
    from vlprune.lmms_plugin import VlpruneLMM
    from vlprune.testing import tiny_video_llava

    lm = VlpruneLMM(pretrained=str(toy[0]), device="cpu", dtype="float32", method="random", keep=KEEP, batch_size=2)
    t = tiny_video_llava(seed=0)
    proc = TinyVideoLlavaProcessor(t)
    lm.loaded = LoadedModel(t.model, proc, t.clip, "tiny-video-llava")
    vlprune.apply(t.model, "random", VIDEO_KEEP)
    docs = {i: {"video": str(write_video(tmp_path / f"v{i}.mkv", n_frames=12 + i, offset=i))} for i in range(3)}
    lm.task_dict = {"activitynetqa": {"test": docs}}
    gen = {"until": ["ASSISTANT:"], "max_new_tokens": 3, "temperature": 0, "do_sample": False}
    reqs = [SimpleNamespace(args=("what happens ? Answer the question using a single word or phrase.", dict(gen),
                                  lambda d: [d["video"]], i, "activitynetqa", "test")) for i in range(3)]
    out = lm.generate_until(reqs)
    assert len(out) == 3 and all(isinstance(o.text, str) for o in out)
    assert [f.shape[0] for f in proc.frames] == [8, 8, 8]
    first = {int(f[0, 0, 0, 0]) for f in proc.frames}  # every clip's first sampled frame is frame 0 (colour offset i)
    assert first == {frame_colour(i)[0] for i in range(3)}
    assert sorted((r["doc_id"], r["kept"], r["of"]) for r in lm.kept_records) == \
        [(i, [VIDEO_KEEP], [8 * 16]) for i in range(3)]
