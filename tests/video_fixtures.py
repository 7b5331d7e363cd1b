"""Tiny real videos (encoded with PyAV), Video-LLaVA-layout benchmark folders, and a local OpenAI-compatible judge
server (http.server on 127.0.0.1) for the video QA tests."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

# codec, pixel format per container (ffv1 is lossless: exact pixels)
CODECS = {".mkv": ("ffv1", "bgr0"), ".mp4": ("h264", "yuv420p"), ".avi": ("mpeg4", "yuv420p")}


def frame_colour(i: int) -> tuple[int, int, int]:
    """The solid colour of frame ``i`` of :func:`write_video` (red encodes the index)."""
    return (20 * i % 256, 255 - 20 * i % 256, 100)


def write_video(path: Path, n_frames: int = 12, size: tuple[int, int] = (32, 24), offset: int = 0) -> Path:
    """A clip of ``n_frames`` solid frames, frame i coloured ``frame_colour(i + offset)``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec, pix = CODECS[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix
        for i in range(n_frames):
            arr = np.empty((size[1], size[0], 3), np.uint8)
            arr[...] = frame_colour(i + offset)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


LAYOUT = {"msvd_qa": ("videos", "", ".avi"), "msrvtt_qa": ("videos/all", "", ".mp4"),
          "tgif_qa": ("mp4", "", ".mp4"), "activitynet_qa": ("all_test", "v_", ".mkv")}


def make_video_bench(root: Path, bench: str, n_videos: int = 2, frames: int = 12) -> Path:
    """``root/<bench>`` in Video-LLaVA's layout: two questions per video (``q<k>_<j>``), answers ``a<k>_<j>``."""
    folder, prefix, ext = LAYOUT[bench]
    d = root / bench
    questions, answers = [], []
    for k in range(n_videos):
        write_video(d / folder / f"{prefix}vid{k}{ext}", frames, offset=k)
        for j in range(2):
            qid = f"v_vid{k}_{j}"
            questions.append({"video_name": f"vid{k}", "question": f"what happens in {k} {j}?", "question_id": qid})
            answers.append({"answer": f"a{k}_{j}", "type": 0, "question_id": qid})
    (d / "test_q.json").write_text(json.dumps(questions))
    (d / "test_a.json").write_text(json.dumps(answers))
    return d


class JudgeServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 with deterministic verdicts, chosen by the
    predicted answer in the user message:

    * ``right...`` -> ``{'pred': 'yes', 'score': 5}``, ``wrong...`` -> ``{'pred': 'no', 'score': 1}``
    * ``flaky...`` -> a malformed reply first (a fenced block), then ``{'pred': 'yes', 'score': 4.8}``
    * ``garbled...`` -> always malformed prose
    * ``boom...`` -> HTTP 500 first, then ``{'pred': 'no', 'score': 2}``
    * ``down=True`` -> every request gets HTTP 503.
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []  # every request body received
        self.seen: dict[str, int] = {}
        self.down = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, content = server.reply(self.path, body, self.headers.get("Authorization", ""))
                if status != 200:
                    payload = json.dumps({"error": {"message": content, "type": "server_error"}}).encode()
                else:
                    payload = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, path: str, body: dict, auth: str) -> tuple[int, str]:
        with self.lock:
            self.calls.append(body)
            if path != "/v1/chat/completions" or auth != "Bearer test-key":
                return 404, f"unexpected {path} / {auth}"
            if self.down:
                return 503, "the judge is down"
            pred = re.search(r"Predicted Answer: (.*)\n\n", body["messages"][1]["content"]).group(1)
            n = self.seen[pred] = self.seen.get(pred, 0) + 1
        if pred.startswith("right"):
            return 200, "{'pred': 'yes', 'score': 5}"
        if pred.startswith("wrong"):
            return 200, "{'pred': 'no', 'score': 1}"
        if pred.startswith("flaky"):
            return 200, "```python\n{'pred': 'yes', 'score': 4.8}\n```" if n == 1 else "{'pred': 'yes', 'score': 4.8}"
        if pred.startswith("garbled"):
            return 200, "The prediction matches the answer quite well."
        if pred.startswith("boom") and n == 1:
            return 500, "internal error"
        return 200, "{'pred': 'no', 'score': 2}"

    def preds(self) -> list[str]:
        """The predicted answer of every request, in arrival order."""
        out = []
        for body in self.calls:
            found = re.search(r"Predicted Answer: (.*)\n\n", body["messages"][1]["content"])
            out.append(found.group(1) if found else "?")
        return out

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TinyVideoLlavaProcessor:
    """What transformers' VideoLlavaProcessor does for a video prompt (its video processor needs torchvision,
    which requirements/lock.txt lacks): each frame resized to the tower's size and scaled, and ``<video>``
    replaced by frames x (1 + patches) video tokens.  Records the frames it was given."""

    chat_template = None

    def __init__(self, t):
        self.t, self.tokenizer = t, t.tokenizer
        self.frames: list[np.ndarray] = []
        self.batches: list[tuple[int, ...]] = []  # pixel_values_videos shape per call (one call per batch)

    def __call__(self, text, videos, return_tensors="pt", padding=True):
        from transformers import BatchFeature

        from vlprune.testing import _pad_rows

        size = self.t.model.config.vision_config.image_size
        video_id = self.t.model.config.video_token_id
        self.frames.extend(videos)
        pixels = [torch.nn.functional.interpolate(torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1,
                                                  size=(size, size), mode="bilinear") for v in videos]
        rows = []
        for prompt, video in zip(text, videos):
            before, after = prompt.split("<video>")
            n = video.shape[0] * (self.t.grid * self.t.grid + 1)
            rows.append(self.tokenizer(before)["input_ids"] + [video_id] * n
                        + self.tokenizer(after, add_special_tokens=False)["input_ids"])
        self.batches.append(tuple(torch.stack(pixels).shape))
        return BatchFeature({**_pad_rows(rows, left_pad=True), "pixel_values_videos": torch.stack(pixels)})
