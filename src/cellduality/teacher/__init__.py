"""Teachers that write chain-of-thought SFT data, and the filters that keep the good traces (paper §3.3.1)."""

from cellduality.teacher.base import Generation, Teacher, TeacherRequest, Usage
from cellduality.teacher.build import build_sft, make_teacher
from cellduality.teacher.config import TeachConfig
from cellduality.teacher.filtering import Verdict, judge_dual, judge_primal, select
from cellduality.teacher.offline import OfflineTeacher
from cellduality.teacher.openai_teacher import OpenAITeacher

__all__ = [
    "Generation",
    "OfflineTeacher",
    "OpenAITeacher",
    "TeachConfig",
    "Teacher",
    "TeacherRequest",
    "Usage",
    "Verdict",
    "build_sft",
    "judge_dual",
    "judge_primal",
    "make_teacher",
    "select",
]
