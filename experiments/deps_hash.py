"""Print a short hash of the project's dependency lists: the key of the cached venv."""

import hashlib
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parents[1]
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
text = repr(project["dependencies"]) + repr(project.get("optional-dependencies"))
text += (root / "requirements-torch.txt").read_text()
print(hashlib.sha256(text.encode()).hexdigest()[:16])
