"""The one-way dependencies of DESIGN.md: storage imports neither torch nor Prefect, data_quality neither,
dpo_train no Prefect. Checked in a fresh interpreter, after importing every module of the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if m.name.endswith("__main__"):
        continue
    importlib.import_module(m.name)
bad = [name for name in {forbidden!r} if name in sys.modules]
print(",".join(bad))
"""


@pytest.mark.parametrize("pkg,forbidden", [
    ("storage", ["torch", "prefect", "transformers", "data_quality", "dpo_train", "pipelines"]),
    ("data_quality", ["torch", "prefect", "transformers", "dpo_train", "pipelines"]),
    ("dpo_train", ["prefect", "pipelines", "data_quality"]),
])
def test_package_does_not_import(pkg, forbidden):
    out = subprocess.run([sys.executable, "-c", CHECK.format(pkg=pkg, forbidden=forbidden)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{pkg} imports {out.stdout.strip()}"
