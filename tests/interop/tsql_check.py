"""Parses T-SQL with sqlglot (an independent T-SQL grammar), strictly.

stdin: JSON [[name, sql], ...]. stdout: JSON {name: error-or-null}. A statement
that sqlglot can only keep as an opaque Command counts as an error: it means
the grammar did not understand it.
"""
import json
import sys

import sqlglot
from sqlglot import exp

out = {}
for name, sql in json.load(sys.stdin):
    try:
        parsed = [s for s in sqlglot.parse(sql, read="tsql", error_level=sqlglot.ErrorLevel.RAISE) if s]
        opaque = [s.sql(dialect="tsql")[:80] for s in parsed if isinstance(s, exp.Command)]
        out[name] = f"not understood: {opaque}" if opaque else (None if parsed else "no statement")
    except Exception as e:  # noqa: BLE001 - any parser failure is the answer
        out[name] = str(e)[:400]
json.dump(out, sys.stdout)
