"""Logical-anomaly audits: a spec of components and rules (spec), drafted from good references (draft),
checked per image (check), run over a batch with the report machinery (runner)."""
