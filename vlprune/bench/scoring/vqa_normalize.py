"""Answer normalisation of the VQA family of benchmarks (VQAv2, TextVQA).

Two official code paths are reproduced here, written from their behaviour:

* ``process_punctuation`` / ``process_digit_article`` / ``strip_vqa_whitespace``
  -- the VQA challenge evaluation ``VQAEval`` of
  ``GT-Vision-Lab/VQA`` (``PythonEvaluationTools/vqaEvaluation/vqaEval.py``):
  ``processPunctuation`` + ``processDigitArticle``.
* ``evalai_normalize`` -- ``EvalAIAnswerProcessor`` from MMF / Pythia, vendored
  by LLaVA as ``llava/eval/m4c_evaluator.py`` and used by
  ``eval_textvqa.py`` and ``scripts/convert_vqav2_for_submission.py``.  It is
  the VQAEval normalisation preceded by a "word tokenize" step (lower-case,
  drop ``,`` and ``?``, split ``'s``) and uses a slightly different
  comma-between-digits regex.

Upstream quirks that change results are kept on purpose:

* the period regex is written upstream as ``(?!<=\\d)(\\.)(?!\\d)``; the first
  group is a *lookahead* (not a lookbehind), so it is always true and the regex
  simply removes every ``.`` that is not followed by a digit;
* upstream passes ``re.UNICODE`` positionally to ``Pattern.sub``, where it lands
  in the ``count`` slot: at most 32 periods are removed per string;
* the punctuation decision ("delete" vs "replace by a space") looks at the
  *original* string for every punctuation mark, not at the partly processed one;
* the contraction table contains a few keys that can never match after
  lower-casing (``Im``, ``Ive``, ...) and the odd ``somebody'd -> somebodyd``
  entry; they are kept verbatim.
"""

from __future__ import annotations

import re

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "evalai_normalize",
    "leave_one_out_accuracy",
    "process_digit_article",
    "process_punctuation",
    "strip_vqa_whitespace",
]

# Number words mapped to digits (``manualMap`` upstream).  Only 0-10.
NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}
NUMBER_WORDS["none"] = "0"

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Punctuation handled by processPunctuation, in upstream order.  ``.`` is
# handled separately (period regex) and ``'`` / ``:`` are *not* in the list.
PUNCTUATION: tuple[str, ...] = tuple(
    [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-"]
    + [">", "<", "@", "`", ",", "?", "!"]
)

# Contraction table of the VQA evaluation, written as "raw=>fixed" pairs.
_CONTRACTION_PAIRS = """
aint=>ain't arent=>aren't cant=>can't couldve=>could've couldnt=>couldn't
couldn'tve=>couldn't've couldnt've=>couldn't've didnt=>didn't doesnt=>doesn't
dont=>don't hadnt=>hadn't hadnt've=>hadn't've hadn'tve=>hadn't've hasnt=>hasn't
havent=>haven't hed=>he'd hed've=>he'd've he'dve=>he'd've hes=>he's howd=>how'd
howll=>how'll hows=>how's Id've=>I'd've I'dve=>I'd've Im=>I'm Ive=>I've
isnt=>isn't itd=>it'd itd've=>it'd've it'dve=>it'd've itll=>it'll let's=>let's
maam=>ma'am mightnt=>mightn't mightnt've=>mightn't've mightn'tve=>mightn't've
mightve=>might've mustnt=>mustn't mustve=>must've neednt=>needn't notve=>not've
oclock=>o'clock oughtnt=>oughtn't ow's'at=>'ow's'at 'ows'at=>'ow's'at
'ow'sat=>'ow's'at shant=>shan't shed've=>she'd've she'dve=>she'd've
she's=>she's shouldve=>should've shouldnt=>shouldn't shouldnt've=>shouldn't've
shouldn'tve=>shouldn't've somebody'd=>somebodyd somebodyd've=>somebody'd've
somebody'dve=>somebody'd've somebodyll=>somebody'll somebodys=>somebody's
someoned=>someone'd someoned've=>someone'd've someone'dve=>someone'd've
someonell=>someone'll someones=>someone's somethingd=>something'd
somethingd've=>something'd've something'dve=>something'd've
somethingll=>something'll thats=>that's thered=>there'd thered've=>there'd've
there'dve=>there'd've therere=>there're theres=>there's theyd=>they'd
theyd've=>they'd've they'dve=>they'd've theyll=>they'll theyre=>they're
theyve=>they've twas=>'twas wasnt=>wasn't wed've=>we'd've we'dve=>we'd've
weve=>we've werent=>weren't whatll=>what'll whatre=>what're whats=>what's
whatve=>what've whens=>when's whered=>where'd wheres=>where's whereve=>where've
whod=>who'd whod've=>who'd've who'dve=>who'd've wholl=>who'll whos=>who's
whove=>who've whyll=>why'll whyre=>why're whys=>why's wont=>won't
wouldve=>would've wouldnt=>wouldn't wouldnt've=>wouldn't've
wouldn'tve=>wouldn't've yall=>y'all yall'll=>y'all'll y'allll=>y'all'll
yall'd've=>y'all'd've y'alld've=>y'all'd've y'all'dve=>y'all'd've youd=>you'd
youd've=>you'd've you'dve=>you'd've youll=>you'll youre=>you're youve=>you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split("=>", 1) for pair in _CONTRACTION_PAIRS.split()
)

# "Is there a comma between two digits?" -- VQAEval form and EvalAI form.
_VQA_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_EVALAI_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")
# Equivalent to upstream "(?!<=\d)(\.)(?!\d)" (see module docstring).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# Upstream passes re.UNICODE (== 32) as the ``count`` argument of ``sub``.
_PERIOD_SUB_COUNT = int(re.UNICODE)


def process_punctuation(text: str, *, evalai: bool = False) -> str:
    """``processPunctuation`` of VQAEval (``evalai=True``: EvalAI's variant).

    For every punctuation mark: if it touches a space anywhere in the input, or
    the input has a comma between two digits, the mark is deleted; otherwise it
    is replaced by a space.  Then periods not followed by a digit are deleted
    (at most 32 of them, as upstream).
    """
    comma_re = _EVALAI_COMMA_BETWEEN_DIGITS if evalai else _VQA_COMMA_BETWEEN_DIGITS
    has_digit_comma = comma_re.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if has_digit_comma or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_SUB_COUNT)


def process_digit_article(text: str) -> str:
    """``processDigitArticle``: lower-case, number words -> digits, drop
    articles, fix contractions, re-join on single spaces."""
    kept = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            kept.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in kept)


def strip_vqa_whitespace(text: str) -> str:
    """What ``VQAEval.evaluate`` does to every answer first: ``\\n`` and
    ``\\t`` -> space, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_normalize(text: str) -> str:
    """``EvalAIAnswerProcessor.__call__`` (LLaVA's ``m4c_evaluator.py``)."""
    # word_tokenize
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = process_punctuation(strip_vqa_whitespace(text), evalai=True)
    return process_digit_article(text)


def leave_one_out_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """The human-consensus VQA accuracy of an already normalised prediction.

    For each of the n annotators, drop that annotator and score
    ``min(1, #matches among the other n-1 / 3)``; return the mean over the n
    subsets (for n = 10 this is the official "averaged over all 10 choose 9
    sets" rule).  Returns 0.0 for an empty answer list.
    """
    n = len(gt_answers)
    if n == 0:
        return 0.0
    total_matches = sum(1 for answer in gt_answers if answer == prediction)
    accs = []
    for answer in gt_answers:
        others = total_matches - (1 if answer == prediction else 0)
        accs.append(min(1.0, others / 3))
    return sum(accs) / n
