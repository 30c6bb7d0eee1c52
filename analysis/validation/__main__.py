"""``python -m intermod.analysis.validation``: regenerate docs/validation.md."""

from .study import main

main()
