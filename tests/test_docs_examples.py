"""The Python example of docs/python-api.md runs as written (from the repository root, as a user would)."""

from __future__ import annotations

import os
import os.path as osp
import re

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_python_api_example_runs(monkeypatch, capsys):
    text = open(osp.join(REPO, "docs", "python-api.md"), encoding="utf-8").read()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(REPO)
    exec(compile(code, "docs/python-api.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "protocol: sysu/" in out and "trial 0: rank-1" in out
    assert os.getcwd() == REPO
