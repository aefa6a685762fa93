"""The QA-set reader, which lives with the format it reads (`instruct_data.qa.reader`); its names are
kept here for the benchmark's importers."""

from instruct_data.qa.reader import DR_FILE, META_FILE, TEST_FILE, QAImage, QASet, QASetError, load_qa_set

__all__ = ["DR_FILE", "META_FILE", "TEST_FILE", "QAImage", "QASet", "QASetError", "load_qa_set"]
