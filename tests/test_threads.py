"""One model, several threads: calls are serialised, a patch belongs to the thread that applied it."""
import threading

import pytest
import torch

import vlprune
from helpers import QUESTIONS


@pytest.fixture(autouse=True)
def _clean(tiny):
    yield
    vlprune.remove(tiny.model)


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box


@pytest.mark.parametrize("what", ["apply", "remove"])
def test_another_thread_cannot_replace_or_remove_the_patch(tiny, what):
    vlprune.apply(tiny.model, "visionzip", 5)
    other = (lambda: vlprune.apply(tiny.model, "random", 5)) if what == "apply" else (lambda: vlprune.remove(tiny.model))
    box = _in_thread(other)
    assert isinstance(box.get("error"), RuntimeError) and "another thread" in str(box["error"])
    assert vlprune.api._state(tiny.model).spec.name == "visionzip"  # untouched


def test_four_threads_applying_four_methods_never_mix(tiny, pixels):
    """The issue's case: four threads each apply a method and generate. Either a thread runs with its own method
    or it is refused; never silently with another thread's."""
    inputs = tiny.prompt_ids(QUESTIONS)
    methods = ["random", "visionzip", "vispruner", "fastv"]
    ref = {}
    for m in methods:
        with vlprune.pruned(tiny.model, m, 5), torch.no_grad():
            ref[m] = tiny.model.generate(**inputs, pixel_values=pixels, max_new_tokens=3, do_sample=False)
    barrier = threading.Barrier(len(methods))
    results: dict = {}

    def work(m):
        barrier.wait()
        try:
            vlprune.apply(tiny.model, m, 5)
        except RuntimeError as e:
            results[m] = e
            return
        try:
            with torch.no_grad():
                results[m] = tiny.model.generate(**inputs, pixel_values=pixels, max_new_tokens=3, do_sample=False)
        finally:
            vlprune.remove(tiny.model)

    threads = [threading.Thread(target=work, args=(m,)) for m in methods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == set(methods)
    ran = [m for m, r in results.items() if isinstance(r, torch.Tensor)]
    assert ran, "at least one thread runs"
    for m, r in results.items():
        if isinstance(r, torch.Tensor):
            assert torch.equal(r, ref[m]), m
        else:
            assert "another thread" in str(r)


def test_concurrent_calls_are_serialised_and_exact(tiny, pixels):
    inputs = tiny.prompt_ids(QUESTIONS)
    vlprune.apply(tiny.model, "fastv", 5)
    with torch.no_grad():
        ref = tiny.model.generate(**inputs, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    outs = []

    def work():
        with torch.no_grad():
            outs.append(tiny.model.generate(**inputs, pixel_values=pixels, max_new_tokens=4, do_sample=False))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 4 and all(torch.equal(o, ref) for o in outs)
