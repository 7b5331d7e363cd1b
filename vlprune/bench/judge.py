"""The GPT-judged score of the video QA benchmarks (Video-ChatGPT's protocol, as Video-LLaVA runs it).

For every answered question the judge model is asked, with the exact messages of Video-LLaVA's
``videollava/eval/video/eval_video_qa.py`` (PKU-YuanGroup/Video-LLaVA @ 984e65b, lines 38-64, Apache-2.0; the
same text as mbzuai-oryx/Video-ChatGPT @ 69ea1db ``quantitative_evaluation/evaluate_activitynet_qa.py``), for a
Python dictionary ``{'pred': 'yes'|'no', 'score': 0..5}``.  Upstream's summary (lines 174-201): accuracy = yes / (yes + no), where
a reply counts as yes if ``"yes" in pred.lower()``, else as no if ``"no" in pred.lower()``; average score =
mean of ``int(score)``.

Differences from upstream, all on the side of never scoring a reply silently:

* a reply is used only if ``ast.literal_eval`` (upstream's parser) gives a dict whose ``pred`` says yes or no
  and whose ``score`` is a number with ``int(score)`` in 0..5.  Any other reply is *malformed*: recorded,
  counted, and asked again, at most ``max_attempts`` times per question; a question whose replies were all
  malformed is counted in ``n_unjudged`` and scored in neither metric (upstream retries forever, and scores a
  dict whose ``score`` cannot be read as 0);
* every reply is appended to a judgements file next to the answers (``<answers>.judge-<model>.jsonl``, an
  :class:`~vlprune.bench.store.AnswersFile`: bound to the judge model, prompt and sampling, locked, fsync-ed
  line by line) the moment it arrives, so an interrupted run loses no reply and a rerun asks only for what is
  missing;
* an endpoint error (HTTP status, connection, timeout) is retried ``max_attempts`` times per question; then
  the run stops with :class:`JudgeUnavailable`, keeping every reply received so far.
"""
from __future__ import annotations

import ast
import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import AnswersFile, RunConfigMismatch, answer_key

__all__ = [
    "SYSTEM_PROMPT",
    "Judge",
    "JudgeUnavailable",
    "judge_messages",
    "judgements_path",
    "parse_judgement",
    "run_judge",
]

# Video-LLaVA videollava/eval/video/eval_video_qa.py (commit 984e65b) lines 44-50 and 55-62, verbatim
SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)
PROMPT_SHA256 = hashlib.sha256((SYSTEM_PROMPT + "\0" + USER_PROMPT).encode("utf-8")).hexdigest()[:16]


class JudgeUnavailable(RuntimeError):
    """The judge endpoint kept failing; the replies received so far are kept."""


@dataclass(frozen=True)
class Judge:
    """An OpenAI-compatible chat-completions endpoint and model.  ``temperature=None`` sends none (the server's
    default, as upstream); ``max_attempts`` bounds both malformed replies and endpoint errors per question."""

    url: str
    model: str
    api_key: str
    temperature: float | None = None
    max_tokens: int | None = None
    max_attempts: int = 3
    workers: int = 8
    timeout: float = 120.0
    retry_wait: float = 5.0

    def __post_init__(self) -> None:
        if not self.url or not self.model:
            raise ValueError("the judge needs an endpoint URL (--judge-url) and a model name (--judge-model)")
        if not self.api_key:
            raise ValueError("the judge needs an API key: set OPENAI_API_KEY (any non-empty value for a local "
                             "server that checks none)")
        if self.max_attempts < 1 or self.workers < 1:
            raise ValueError(f"max_attempts and workers must be >= 1, got {self.max_attempts} and {self.workers}")

    def config(self) -> dict[str, Any]:
        """What a judgements file is bound to: model, prompt and sampling settings (the endpoint is recorded
        beside it, not compared: the same model may be reached at another address; the key is never stored)."""
        return {"kind": "video-qa-judge", "judge_model": self.model, "prompt_sha256": PROMPT_SHA256,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def client(self) -> Any:
        try:
            from openai import OpenAI
        except ImportError:  # pragma: no cover - the test environment has it (requirements/lock.txt)
            raise ImportError("the GPT judge needs the openai client: pip install 'vlprune[video]'") from None
        return OpenAI(base_url=self.url, api_key=self.api_key, max_retries=0, timeout=self.timeout)


def judge_messages(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    """Upstream's two messages for one question-answer pair."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(question=question, answer=answer, pred=pred)}]


def parse_judgement(reply: Any) -> tuple[str, int] | str:
    """``("yes"|"no", int(score))`` from a judge reply, or the reason it is malformed (a string)."""
    if not isinstance(reply, str):
        return f"the reply has no text ({type(reply).__name__})"
    try:
        value = ast.literal_eval(reply)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "not a Python dictionary literal"
    if not isinstance(value, dict) or "pred" not in value or "score" not in value:
        return "not a dictionary with 'pred' and 'score'"
    pred, score = value["pred"], value["score"]
    if not isinstance(pred, str):
        return f"'pred' is {type(pred).__name__}, not a string"
    verdict = "yes" if "yes" in pred.lower() else "no" if "no" in pred.lower() else None
    if verdict is None:
        return f"'pred' is {pred!r}, neither yes nor no"
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        return f"'score' is {score!r}, not a number"
    if not 0 <= int(score) <= 5:
        return f"'score' is {score!r}, outside 0..5"
    return verdict, int(score)


def judgements_path(answers: str | Path, model: str) -> Path:
    """``<answers>.judge-<model>.jsonl`` (the model name made file-safe)."""
    answers = Path(answers)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "judge"
    return answers.with_name(f"{answers.name}.judge-{safe}.jsonl")


def _ask(client: Any, judge: Judge, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One call: ``{"text", "reply_model"}`` or ``{"error"}`` (nothing was paid for)."""
    import openai

    kwargs: dict[str, Any] = {}
    if judge.temperature is not None:
        kwargs["temperature"] = judge.temperature
    if judge.max_tokens is not None:
        kwargs["max_tokens"] = judge.max_tokens
    try:
        completion = client.chat.completions.create(model=judge.model, messages=messages, **kwargs)
    except openai.APIError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    choices = getattr(completion, "choices", None) or []
    text = choices[0].message.content if choices and choices[0].message is not None else None
    return {"text": text, "reply_model": getattr(completion, "model", None)}


def run_judge(pairs: list[tuple[Any, str, str, str]], judge: Judge, path: str | Path,
              recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Judge ``pairs`` of ``(question_id, question, answer, pred)``; return the verdict per pair (in order) and
    the counts.  Replies already in ``path`` are reused; the others are asked for and appended as they come."""
    keyed = []
    for qid, question, answer, pred in pairs:
        messages = judge_messages(question, answer, pred)
        keyed.append((qid, messages, answer_key({"question_id": qid, "prompt": messages[1]["content"]})))
    recorded = {**(recorded or {}), "judge_url": judge.url}
    store = AnswersFile(path, judge.config(), recorded)
    try:
        store.__enter__()  # lock, check the binding, read the replies so far
    except RunConfigMismatch as exc:
        raise RunConfigMismatch(f"{exc}\n(judgements: pass --judgements PATH to keep another judge's replies "
                                "apart)") from None
    try:
        ok: dict[str, dict[str, Any]] = {}
        tries: dict[str, int] = defaultdict(int)
        for record in store.records:
            key = answer_key(record)
            tries[key] += 1
            if record.get("status") == "ok":
                ok.setdefault(key, record)
        todo = {}
        for qid, messages, key in keyed:
            if key not in ok and tries[key] < judge.max_attempts and key not in todo:
                todo[key] = (qid, messages)
        asked = _ask_all(todo, judge, store, ok, tries)
    finally:
        store.close()
    verdicts, malformed_left = [], []
    for qid, _, key in keyed:
        record = ok.get(key)
        verdicts.append(None if record is None else (record["pred"], record["score"]))
        if record is None:
            malformed_left.append(qid)
    return {"verdicts": verdicts, "unjudged": malformed_left, "asked": asked,
            "n_malformed_replies": sum(1 for r in store.records if r.get("status") == "malformed")}


def _ask_all(todo: dict[str, tuple[Any, list]], judge: Judge, store: AnswersFile, ok: dict[str, dict[str, Any]],
             tries: dict[str, int]) -> int:
    """Ask for every ``todo`` question (``judge.workers`` at a time); append each reply as it arrives."""
    if not todo:
        return 0
    client = judge.client()
    errors: dict[str, int] = defaultdict(int)
    asked = 0
    with ThreadPoolExecutor(max_workers=judge.workers) as pool:
        running: dict[Future, str] = {pool.submit(_ask, client, judge, todo[k][1]): k for k in todo}
        failure = None
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                qid, messages = todo[key]
                reply = future.result()
                again = False
                if "error" in reply:
                    errors[key] += 1
                    again = errors[key] < judge.max_attempts
                    if not again and failure is None:
                        failure = (qid, reply["error"])
                else:
                    asked += 1
                    tries[key] += 1
                    parsed = parse_judgement(reply["text"])
                    record = {"question_id": qid, "prompt": messages[1]["content"], "text": reply["text"] or "",
                              "reply_model": reply["reply_model"], "attempt": tries[key]}
                    if isinstance(parsed, tuple):
                        record.update(status="ok", pred=parsed[0], score=parsed[1])
                    else:
                        record.update(status="malformed", reason=parsed)
                    stamped = store.append([record])[0]
                    if isinstance(parsed, tuple):
                        ok[key] = stamped
                    again = not isinstance(parsed, tuple) and tries[key] < judge.max_attempts
                if again and failure is None:
                    if "error" in reply and judge.retry_wait:
                        time.sleep(judge.retry_wait)
                    running[pool.submit(_ask, client, judge, messages)] = key
        if failure is not None:
            qid, error = failure
            raise JudgeUnavailable(
                f"the judge at {judge.url} failed {judge.max_attempts} times for question {qid!r} ({error}); the "
                f"{len(ok)} judgements received so far are kept in {store.path}: rerun the same command to "
                "continue (only what is missing is asked)")
    return asked
