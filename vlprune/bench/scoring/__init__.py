"""Official benchmark scorers, re-implemented as pure functions.

One module per benchmark; each module docstring names the official script it
reproduces and every deliberate deviation.

==========  ======================================================  ==================
module      reproduces                                              headline
==========  ======================================================  ==================
pope        LLaVA ``llava/eval/eval_pope.py``                       mean F1 (3 splits)
mme         MME ``eval_tool/calculation.py`` (+ LLaVA converter)     perception sum
gqa         LLaVA ``convert_gqa_for_eval.py`` + GQA ``eval.py``      accuracy
vqav2       LLaVA submission converter + VQA ``vqaEval.py``          accuracy
textvqa     LLaVA ``eval_textvqa.py`` / ``m4c_evaluator.py``         accuracy
sqa         LLaVA ``llava/eval/eval_science_qa.py``                  IMG accuracy
mmbench     MMBench circular evaluation, rule-based extraction      circular accuracy
==========  ======================================================  ==================
"""

from .gqa import normalize_gqa_answer, score_gqa
from .mmbench import can_infer, can_infer_option, can_infer_text, score_mmbench
from .mme import parse_mme_answer, score_mme
from .pope import parse_yes_no, pope_metrics, score_pope
from .sqa import parse_sqa_letter, score_sqa
from .textvqa import prompt_to_question, score_textvqa, textvqa_accuracy
from .vqa_normalize import evalai_normalize, leave_one_out_accuracy
from .vqav2 import score_vqav2, vqav2_accuracy

__all__ = [
    "can_infer",
    "can_infer_option",
    "can_infer_text",
    "evalai_normalize",
    "leave_one_out_accuracy",
    "normalize_gqa_answer",
    "parse_mme_answer",
    "parse_sqa_letter",
    "parse_yes_no",
    "pope_metrics",
    "prompt_to_question",
    "score_gqa",
    "score_mmbench",
    "score_mme",
    "score_pope",
    "score_sqa",
    "score_textvqa",
    "score_vqav2",
    "textvqa_accuracy",
    "vqav2_accuracy",
]
