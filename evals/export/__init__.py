"""Exports of the D&R benchmark in the ecosystem's formats: MMAD answers and an lmms-eval task folder."""

from evals.export.lmms_eval import write_lmms_eval_task
from evals.export.mmad import QUESTION_TYPES, export_mmad, mmad_records

__all__ = ["QUESTION_TYPES", "export_mmad", "mmad_records", "write_lmms_eval_task"]
