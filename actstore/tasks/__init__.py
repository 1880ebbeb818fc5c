"""Tasks: which token feature is measured, its classes, its labels and its prompt (see base.py)."""
