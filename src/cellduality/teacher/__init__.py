"""Teachers that write chain-of-thought SFT data, and the filters that keep the good traces (paper §3.3.1)."""

from cellduality.teacher.base import Generation, Teacher, TeacherRequest, Usage
from cellduality.teacher.openai_teacher import OpenAITeacher

__all__ = ["Generation", "OpenAITeacher", "Teacher", "TeacherRequest", "Usage"]
