"""Video QA benchmarks: Video-LLaVA's frame sampling on real (tiny) encoded videos, the readers of the
GPT_Zero_Shot_QA layouts, and resumable answers files through the benchmark runner."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from video_fixtures import LAYOUT, frame_colour, make_video_bench, write_video  # noqa: E402

from vlprune.bench import VIDEO_BENCHMARKS, VideoItem, canonical_bench, read  # noqa: E402
from vlprune.bench.runconfig import questions_sha256  # noqa: E402
from vlprune.bench.video_frames import VideoDecodeError, count_frames, read_frames, sample_indices  # noqa: E402

# --------------------------------------------------------------------------- frame sampling


@pytest.mark.parametrize("total, expected", [
    (12, [0, 1, 3, 4, 6, 7, 9, 11]),       # np.linspace(0, 11, 8, dtype=int)
    (8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (5, [0, 0, 1, 1, 2, 2, 3, 4]),         # shorter than 8 frames: repeats, as decord's get_batch
    (1, [0] * 8),
    (300, [0, 42, 85, 128, 170, 213, 256, 299]),
])
def test_sample_indices_are_video_llavas(total, expected):
    assert sample_indices(total) == expected


def test_sample_indices_refuse_nonsense():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(0)
    with pytest.raises(ValueError, match="num_frames"):
        sample_indices(10, 0)


@pytest.mark.parametrize("ext, tolerance", [(".mkv", 0), (".mp4", 12), (".avi", 12)])
def test_read_frames_decodes_the_sampled_frames(tmp_path, ext, tolerance):
    path = write_video(tmp_path / f"clip{ext}", n_frames=12)
    assert count_frames(path) == 12
    frames = read_frames(path)
    assert frames.shape == (8, 24, 32, 3) and frames.dtype == np.uint8
    for got, index in zip(frames, [0, 1, 3, 4, 6, 7, 9, 11]):
        diff = np.abs(got.astype(int) - np.array(frame_colour(index))).max()
        assert diff <= tolerance, (ext, index, got[0, 0], frame_colour(index))


def test_read_frames_of_a_short_clip_repeat_frames(tmp_path):
    frames = read_frames(write_video(tmp_path / "short.mkv", n_frames=5))
    assert [int(f[0, 0, 0]) for f in frames] == [frame_colour(i)[0] for i in (0, 0, 1, 1, 2, 2, 3, 4)]
    assert read_frames(tmp_path / "short.mkv", num_frames=3).shape[0] == 3


def test_read_frames_draws_again_over_what_decodes(tmp_path, monkeypatch):
    """A file with more packets than decodable frames (a damaged tail) is sampled over the frames that decode."""
    from vlprune.bench import video_frames

    path = write_video(tmp_path / "clip.mkv", n_frames=12)
    monkeypatch.setattr(video_frames, "count_frames", lambda p: 20)
    frames = read_frames(path)
    assert [int(f[0, 0, 0]) for f in frames] == [frame_colour(i)[0] for i in sample_indices(12)]


def test_damaged_and_missing_videos_say_what_to_do(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="re-download it, or remove its question"):
        read_frames(bad)
    with pytest.raises(FileNotFoundError, match="video not found"):
        read_frames(tmp_path / "absent.mp4")


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("bench", VIDEO_BENCHMARKS)
def test_reader_of_each_layout(tmp_path, bench):
    d = make_video_bench(tmp_path, bench)
    items = list(read(bench, d))
    folder, prefix, ext = LAYOUT[bench]
    assert [i.question_id for i in items] == ["v_vid0_0", "v_vid0_1", "v_vid1_0", "v_vid1_1"]
    assert all(isinstance(i, VideoItem) and i.image is None for i in items)
    assert items[2].video.path == d / folder / f"{prefix}vid1{ext}"
    assert items[2].prompt == "what happens in 1 0?"
    assert items[2].target == {"answer": "a1_0", "question": "what happens in 1 0?"}
    frames = items[2].load_video()  # vid1's frame i has colour i + 1
    assert frames.shape[0] == 8 and abs(int(frames[1, 0, 0, 0]) - frame_colour(2)[0]) <= 12
    record = items[2].answer_record("a dog runs")
    assert record == {"question_id": "v_vid1_0", "prompt": "what happens in 1 0?", "text": "a dog runs",
                      "id": "v_vid1_0", "question": "what happens in 1 0?", "answer": "a1_0", "pred": "a dog runs"}


@pytest.mark.parametrize("name, canonical", [("msvd-qa", "msvd_qa"), ("MSRVTT", "msrvtt_qa"), ("tgifqa", "tgif_qa"),
                                             ("activitynet-qa", "activitynet_qa"), ("activitynet", "activitynet_qa")])
def test_video_bench_names(name, canonical):
    assert canonical_bench(name) == canonical


def test_missing_video_is_an_error_naming_the_fix(tmp_path):
    d = make_video_bench(tmp_path, "msvd_qa")
    (d / "videos" / "vid1.avi").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 question\(s\) .* no video in .*videos .*vid1; put the videos "
                                                r"there .*missing_videos='skip'"):
        list(read("msvd_qa", d))
    assert [i.question_id for i in read("msvd_qa", d, missing_videos="skip")] == ["v_vid0_0", "v_vid0_1"]
    ignored = list(read("msvd_qa", d, missing_videos="ignore"))
    assert len(ignored) == 4 and all(i.video is None for i in ignored)
    with pytest.raises(ValueError, match="has no video"):
        ignored[0].load_video()


def test_video_found_in_any_of_the_extensions(tmp_path):
    d = make_video_bench(tmp_path, "msvd_qa")
    (d / "videos" / "vid1.avi").rename(d / "videos" / "vid1.mkv.tmp")
    write_video(d / "videos" / "vid1.mkv", 12)
    (d / "videos" / "vid1.mkv.tmp").unlink()
    assert read("msvd_qa", d).__next__().video.path.suffix == ".avi"
    assert [i.video.path.suffix for i in read("msvd_qa", d)][2:] == [".mkv", ".mkv"]


@pytest.mark.parametrize("mutate, message", [
    (lambda q, a: (q, a[:-1]), "3 answers for the 4 questions"),
    (lambda q, a: (q, a[::-1]), "entry 0 of .*test_a.json answers question 'v_vid1_1'"),
    (lambda q, a: ([{"video_name": "x"}] + q[1:], a), "entry 0 of .*test_q.json has no question, question_id"),
    (lambda q, a: ({"questions": q}, a), "must hold a JSON list"),
    (lambda q, a: (q, [{"text": "x"}] * 4), "has no answer"),
])
def test_odd_question_and_answer_files(tmp_path, mutate, message):
    d = make_video_bench(tmp_path, "tgif_qa")
    q, a = mutate(json.loads((d / "test_q.json").read_text()), json.loads((d / "test_a.json").read_text()))
    (d / "test_q.json").write_text(json.dumps(q))
    (d / "test_a.json").write_text(json.dumps(a))
    with pytest.raises(ValueError, match=message):
        list(read("tgif_qa", d))


def test_absent_or_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="question file not found: .*test_q.json .*GPT_Zero_Shot_QA"):
        list(read("msvd_qa", tmp_path))
    d = make_video_bench(tmp_path, "msvd_qa")
    (d / "test_a.json").write_text("[{")
    with pytest.raises(ValueError, match="test_a.json is not JSON"):
        list(read("msvd_qa", d))


def test_questions_hash_covers_the_video_and_its_frame_count(tmp_path):
    d = make_video_bench(tmp_path, "msvd_qa")
    base = questions_sha256(read("msvd_qa", d))
    assert questions_sha256(read("msvd_qa", d)) == base
    assert questions_sha256(read("msvd_qa", d, num_frames=4)) != base
    (d / "videos" / "vid0.avi").rename(d / "videos" / "vid0.mp4")
    assert questions_sha256(read("msvd_qa", d)) != base


# --------------------------------------------------------------------------- answers through the runner


class FakeInputs(dict):
    def to(self, device):
        return self


class FakeVideoModel:
    """A generator that answers with the mean red value of each video's frames (what it was given)."""

    device = "cpu"
    dtype = "float32"

    def __init__(self):
        self.batches = []

    def generate(self, input_ids, videos, **kwargs):
        import torch

        self.batches.append(len(videos))
        words = [int(v[..., 0].mean()) + 1000 for v in videos]  # token ids
        return torch.cat([input_ids, torch.tensor(words)[:, None]], dim=1)

    def state_dict(self):
        import torch

        return {"w": torch.zeros(1)}


class FakeVideoProcessor:
    chat_template = None

    def __init__(self):
        self.tokenizer = self
        self.prompts = []

    def __call__(self, text, videos, return_tensors, padding):
        import torch

        self.prompts.extend(text)
        return FakeInputs(input_ids=torch.zeros(len(text), 3, dtype=torch.long), videos=videos)

    def batch_decode(self, ids, skip_special_tokens):
        return [f"red {int(row[0]) - 1000}" for row in ids]


def test_answers_are_written_resumably_and_bound_to_the_run(tmp_path):
    """The runner decodes each question's video, passes the 8 frames to the model, appends Video-LLaVA-readable
    answer lines, resumes without regenerating, and refuses another frame count."""
    from vlprune.bench.runner import answer_items
    from vlprune.bench.store import RunConfigMismatch

    d = make_video_bench(tmp_path, "activitynet_qa")
    items = list(read("activitynet_qa", d))
    model, proc = FakeVideoModel(), FakeVideoProcessor()
    path = tmp_path / "out" / "full.jsonl"
    config = {"bench": "activitynet_qa", "questions_sha256": questions_sha256(items)}
    answers = answer_items(model, proc, items[:3], path, batch_size=2, config=config)
    expected_red = [np.mean([frame_colour(i + k)[0] for i in sample_indices(12)]) for k in (0, 0, 1, 1)]
    assert [a["text"] for a in answers] == [f"red {int(r)}" for r in expected_red[:3]]
    assert proc.prompts[0] == "USER: <video>\nwhat happens in 0 0? ASSISTANT:"
    assert model.batches == [2, 1]
    answers = answer_items(model, proc, items, path, batch_size=2, config=config)  # resume: only the 4th
    assert model.batches == [2, 1, 1] and answers[3]["pred"] == answers[3]["text"] == f"red {int(expected_red[3])}"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["v_vid0_0", "v_vid0_1", "v_vid1_0", "v_vid1_1"]
    assert all({"question", "answer", "pred"} <= set(line) for line in lines)  # eval_video_qa.py's fields
    fewer = list(read("activitynet_qa", d, num_frames=4))
    with pytest.raises(RunConfigMismatch, match="questions_sha256"):
        answer_items(model, proc, fewer, path, config={**config, "questions_sha256": questions_sha256(fewer)})
