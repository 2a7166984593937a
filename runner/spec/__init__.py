"""Workflow and agent documents: loading, validation, compilation and plans. Pure: no I/O but
reading the files it is given."""
