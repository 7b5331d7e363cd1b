"""``--methods all``: every registered method, less those the model's family cannot run (named, with the reason)."""
import pytest

from vlprune.registry import methods
from vlprune.validate import for_family, parse_methods


def test_all_expands_to_every_registered_method_once():
    every = sorted(methods())
    assert parse_methods("all") == every
    assert parse_methods("fastv, ALL") == ["fastv"] + [m for m in every if m != "fastv"]
    assert {"flowcut", "holov", "hired"} <= set(every)


@pytest.mark.parametrize("family,dropped", [("llava", {"hired"}), ("llava_next", set()),
                                            ("qwen2_5_vl", {"hired", "flowcut"})])
def test_for_family_drops_the_limited_methods_with_their_reason(family, dropped):
    kept, skipped = for_family(parse_methods("all"), family)
    limited = {n for n, s in methods().items() if s.families is not None and family not in s.families}
    assert dropped <= limited and set(kept) == set(methods()) - limited
    assert {line.split(" ")[0] for line in skipped} == limited
    for line in skipped:
        spec = methods()[line.split(" ")[0]]
        assert spec.families_why in line and f"runs on {', '.join(spec.families)} only" in line


def test_eval_all_on_the_testbed_runs_the_llava_methods_and_says_what_it_skipped(monkeypatch):
    """The testbed is a LLaVA-1.5: hired is skipped (one line), every other method is checked and evaluated."""
    from typer.testing import CliRunner

    import vlprune.evaluation
    from vlprune.cli import app

    seen = {}

    def fake_evaluate(loaded, samples, names, keeps, *args, **kwargs):
        seen["names"], seen["keeps"] = names, keeps
        raise RuntimeError("stop after the checks")

    monkeypatch.setattr(vlprune.evaluation, "evaluate", fake_evaluate)
    result = CliRunner().invoke(app, ["eval", "--methods", "all", "--keep", "8", "--limit", "1"])
    assert "stop after the checks" in result.output, result.output
    limited = {n for n, s in methods().items() if s.families is not None and "llava" not in s.families}
    assert seen["names"] == [m for m in sorted(methods()) if m not in limited] and seen["keeps"] == [8]
    skipped_lines = [line for line in result.output.splitlines() if line.startswith("--methods all: skipped")]
    assert len(skipped_lines) == 1 and all(name in skipped_lines[0] for name in limited)
